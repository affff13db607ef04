//! Running `capture` and independent reference captures (tcpdump + tshark) side by side,
//! and parsing what each printed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Topology;
use crate::{capture_bin, run_ok};

/// A `capture` process running in a namespace.
pub struct CaptureRun {
    child: Child,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<Vec<String>>>,
}

/// What a finished `capture` run printed.
#[derive(Debug)]
pub struct CaptureOutput {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl CaptureRun {
    /// Starts `capture ARGS` in namespace `ns` and waits until it reports that it captures.
    pub fn start(ns: &str, args: &[&str]) -> Result<Self> {
        Self::start_with_env(ns, args, &[])
    }

    /// Like [`CaptureRun::start`], with extra environment variables (e.g. `CAPTURE_NODE`); also
    /// waits for an agent's "agent listening" line.
    pub fn start_with_env(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Topology::exec(ns, &capture_bin().to_string_lossy());
        cmd.args(args).envs(env.iter().copied());
        Self::spawn_ready(cmd)
    }

    /// Like [`CaptureRun::start`], as root holding only the capabilities `caps` (setpriv
    /// names, e.g. `["bpf", "net_admin", "perfmon"]`) with `no_new_privs`, the way a
    /// container that drops all but these runs it.
    pub fn start_with_caps(ns: &str, caps: &[&str], args: &[&str]) -> Result<Self> {
        Self::spawn_ready(Self::with_only_caps(ns, caps, args))
    }

    /// The command `capture ARGS` in `ns` as root with only `caps` (see
    /// [`CaptureRun::start_with_caps`]).
    pub fn with_only_caps(ns: &str, caps: &[&str], args: &[&str]) -> std::process::Command {
        let keep: String = caps.iter().map(|c| format!(",+{c}")).collect();
        let mut cmd = Topology::exec(ns, "setpriv");
        cmd.arg(format!("--bounding-set=-all{keep}"))
            .args(["--inh-caps=-all", "--no-new-privs", "--"])
            .arg(capture_bin())
            .args(args);
        cmd
    }

    /// Like [`CaptureRun::start`], with stdout written to `file` instead of collected (for
    /// output too large to hold, or to leave pipe costs out of a measurement);
    /// [`CaptureOutput::stdout`] is then empty.
    pub fn start_stdout_to(ns: &str, args: &[&str], file: std::fs::File) -> Result<Self> {
        let mut cmd = Topology::exec(ns, &capture_bin().to_string_lossy());
        cmd.args(args);
        Self::spawn_ready_with(cmd, Some(file))
    }

    fn spawn_ready(cmd: std::process::Command) -> Result<Self> {
        Self::spawn_ready_with(cmd, None)
    }

    fn spawn_ready_with(
        mut cmd: std::process::Command,
        stdout_file: Option<std::fs::File>,
    ) -> Result<Self> {
        let stdout = stdout_file.map_or_else(Stdio::piped, Stdio::from);
        let mut child = cmd
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting capture")?;
        let stderr = child.stderr.take().context("capture stderr")?;
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        // Piped (so there to collect) unless it goes to a file.
        let stdout = child.stdout.take().map(|stdout| {
            std::thread::spawn(move || {
                BufReader::new(stdout)
                    .lines()
                    .map_while(|l| l.ok())
                    .collect::<Vec<_>>()
            })
        });
        let stderr = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.starts_with("capturing ")
                    || line.starts_with("recording ")
                    || line.starts_with("agent listening ")
                {
                    let _ = ready_tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let mut run = CaptureRun {
            child,
            stdout,
            stderr: Some(stderr),
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => Ok(run),
            Err(_) => {
                let _ = run.child.kill();
                let out = run.finish()?;
                bail!(
                    "capture did not start: {:?}\n{}",
                    out.status,
                    out.stderr.join("\n")
                );
            }
        }
    }

    /// Starts `capture packets --iface IFACE --port PORT EXTRA...` in namespace `ns`.
    pub fn packets(ns: &str, iface: &str, port: u16, extra: &[&str]) -> Result<Self> {
        let port = port.to_string();
        let mut args = vec!["packets", "--iface", iface, "--port", &port];
        args.extend_from_slice(extra);
        Self::start(ns, &args)
    }

    /// Starts `capture record --iface IFACE --port 8080 --name NAME EXTRA...` in `ns` (EXTRA
    /// chooses the store).
    pub fn record(ns: &str, iface: &str, name: &str, extra: &[String]) -> Result<Self> {
        let mut args = vec!["record", "--iface", iface, "--port", "8080", "--name", name];
        args.extend(extra.iter().map(String::as_str));
        Self::start(ns, &args)
    }

    /// Process id, to signal it.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Lets the last packets reach the capture (300 ms), stops it with Ctrl-C (SIGINT) and
    /// checks it ended well; its stderr, one string.
    pub fn stop_ok(self) -> Result<String> {
        std::thread::sleep(Duration::from_millis(300));
        let out = self.stop(libc::SIGINT)?;
        let stderr = out.stderr.join("\n");
        if !out.status.success() {
            bail!("capture failed ({:?}): {stderr}", out.status);
        }
        Ok(stderr)
    }

    /// Sends `signal` and collects the output once it exits (fails after 30 s).
    pub fn stop(self, signal: i32) -> Result<CaptureOutput> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
        self.finish()
    }

    /// Waits for exit (e.g. after `--duration`) and collects the output (fails after 30 s).
    pub fn finish(self) -> Result<CaptureOutput> {
        self.finish_within(Duration::from_secs(30))
    }

    /// Waits up to `limit` for the process to end by itself (a recording that stops at a
    /// limit or a full disk) and collects the output.
    pub fn finish_within(mut self, limit: Duration) -> Result<CaptureOutput> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("capture did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(CaptureOutput {
            status,
            stdout,
            stderr,
        })
    }
}

impl Drop for CaptureRun {
    fn drop(&mut self) {
        // `finish` takes the stderr reader: still there means the process was never reaped.
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The final `counters:` line of capture's stderr lines as name -> value.
pub fn counters_in(stderr: &[String]) -> Result<HashMap<String, u64>> {
    let line = stderr
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("counters: "))
        .with_context(|| format!("no counters line in stderr:\n{}", stderr.join("\n")))?;
    line.split_whitespace()
        .map(|pair| {
            let (name, value) = pair.split_once('=').context("counter without =")?;
            Ok((name.to_string(), value.parse()?))
        })
        .collect()
}

impl CaptureOutput {
    /// The final `counters:` line as name -> value.
    pub fn counters(&self) -> Result<HashMap<String, u64>> {
        counters_in(&self.stderr)
    }

    /// Every packet line printed.
    pub fn packets(&self) -> Result<Vec<PacketLine>> {
        self.stdout.iter().map(|l| PacketLine::parse(l)).collect()
    }
}

/// One packet as `capture packets` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketLine {
    pub iface: String,
    /// "in" or "out".
    pub direction: String,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: String,
    pub seq: u32,
    pub len: u64,
    /// The flow hash the packet carried (the kernel's, for live capture).
    pub flow: u32,
}

impl PacketLine {
    /// Parses `TIME IFACE DIR SRC > DST Flags [F] seq N ack N win N len N flow HEX`.
    pub fn parse(line: &str) -> Result<Self> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 18
            || f[4] != ">"
            || f[6] != "Flags"
            || f[8] != "seq"
            || f[14] != "len"
            || f[16] != "flow"
        {
            bail!("unexpected packet line {line:?}");
        }
        Ok(PacketLine {
            iface: f[1].to_string(),
            direction: f[2].to_string(),
            src: f[3]
                .parse()
                .with_context(|| format!("source in {line:?}"))?,
            dst: f[5]
                .parse()
                .with_context(|| format!("destination in {line:?}"))?,
            flags: f[7].trim_matches(['[', ']']).to_string(),
            seq: f[9].parse()?,
            len: f[15].parse()?,
            flow: u32::from_str_radix(f[17], 16)
                .with_context(|| format!("flow hash in {line:?}"))?,
        })
    }
}

/// tcpdump writing a pcap of an interface, read back with tshark: the independent view of
/// what crossed the interface.
pub struct Tcpdump {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// One TCP packet as tshark decodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefPacket {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub seq: u32,
    /// TCP flag bits (FIN=1, SYN=2, RST=4, PSH=8, ACK=16).
    pub flags: u8,
    pub len: u64,
}

impl RefPacket {
    /// Whether `capture` is meant to copy it: payload, or SYN/FIN/RST.
    pub fn carries_something(&self) -> bool {
        self.len > 0 || self.flags & 0x07 != 0
    }
}

impl Tcpdump {
    /// Starts capturing TCP on `ifname` in `ns`; returns once tcpdump listens.
    pub fn start(ns: &str, ifname: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("ref.pcap");
        let mut child = Topology::exec(ns, "tcpdump")
            .args([
                "-i",
                ifname,
                "-n",
                "-s",
                "0",
                "-U",
                "--immediate-mode",
                // 64 MiB of kernel buffer (KiB), so the reference keeps up with h2load's burst
                // of 70 KB POSTs.
                "-B",
                "65536",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (installed by `cargo xtask setup`)")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(15))
            .context("tcpdump did not start listening")?;
        Ok(Tcpdump {
            child,
            file,
            _dir: dir,
        })
    }

    /// Stops tcpdump and keeps its pcap at `dest`.
    pub fn stop_into(mut self, dest: &std::path::Path) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        std::fs::copy(&self.file, dest)
            .with_context(|| format!("copying the pcap to {}", dest.display()))?;
        Ok(())
    }

    /// Stops tcpdump and decodes the TCP packets it saw.
    pub fn stop(mut self) -> Result<Vec<RefPacket>> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        let out = run_ok(std::process::Command::new("tshark").args([
            "-r",
            &self.file.to_string_lossy(),
            "-n",
            "-T",
            "fields",
            "-E",
            "separator=,",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "tcp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.seq_raw",
            "-e",
            "tcp.flags",
            "-e",
            "tcp.len",
        ]))?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_tshark_line)
            .collect()
    }
}

fn parse_tshark_line(line: &str) -> Result<RefPacket> {
    let f: Vec<&str> = line.split(',').collect();
    if f.len() != 9 {
        bail!("unexpected tshark line {line:?}");
    }
    let ip = |v4: &str, v6: &str| -> Result<std::net::IpAddr> {
        let text = if v4.is_empty() { v6 } else { v4 };
        text.parse().with_context(|| format!("address in {line:?}"))
    };
    let src = SocketAddr::new(ip(f[0], f[1])?, f[2].parse()?);
    let dst = SocketAddr::new(ip(f[3], f[4])?, f[5].parse()?);
    let flags = u16::from_str_radix(f[7].trim_start_matches("0x"), 16)? as u8;
    Ok(RefPacket {
        src,
        dst,
        seq: f[6].parse()?,
        flags,
        len: f[8].parse()?,
    })
}

/// tcpdump-style flag letters for bits, as `capture packets` prints them.
pub fn flag_letters(flags: u8) -> String {
    let mut s = String::new();
    for (bit, letter) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
    ] {
        if flags & bit != 0 {
            s.push(letter);
        }
    }
    if s.is_empty() {
        s.push_str("none");
    }
    s
}

/// BPF programs and links a process holds, from the kernel's `/proc/PID/fdinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfObjects {
    pub prog_ids: Vec<u32>,
    pub link_ids: Vec<u32>,
}

impl CaptureRun {
    /// The BPF programs and links this capture holds open right now.
    pub fn bpf_objects(&self) -> Result<BpfObjects> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let mut objects = BpfObjects::default();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
            let Ok(text) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            for line in text.lines() {
                if let Some(id) = line.strip_prefix("prog_id:") {
                    objects.prog_ids.push(id.trim().parse()?);
                } else if let Some(id) = line.strip_prefix("link_id:") {
                    objects.link_ids.push(id.trim().parse()?);
                }
            }
        }
        objects.prog_ids.sort_unstable();
        objects.prog_ids.dedup();
        objects.link_ids.sort_unstable();
        objects.link_ids.dedup();
        Ok(objects)
    }
}

impl BpfObjects {
    /// The links of kernel link type `kind` (bpftool's name: `perf_event` for uprobes and
    /// tracepoints, `raw_tracepoint`) running one of these programs.
    pub fn links_of_type(&self, kind: &str) -> Result<usize> {
        let out = run_ok(std::process::Command::new("bpftool").args(["link", "show", "-j"]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split('}')
            .filter(|link| link.contains(&format!("\"type\":\"{kind}\"")))
            .filter(|link| {
                self.prog_ids
                    .iter()
                    .any(|id| link.contains(&format!("\"prog_id\":{id}")))
            })
            .count())
    }

    /// The uprobes and tracepoints among these: perf_event links.
    pub fn perf_links(&self) -> Result<usize> {
        self.links_of_type("perf_event")
    }

    /// Which of these programs and links the kernel still has (bpftool's view).
    pub fn still_alive(&self) -> Result<Vec<String>> {
        let ids = |args: &[&str], key: &str| -> Result<Vec<(u32, u32)>> {
            let out = run_ok(std::process::Command::new("bpftool").args(args))?;
            let text = String::from_utf8_lossy(&out.stdout);
            // Minimal JSON scan: each object has "id":N and, for links, "prog_id":N.
            Ok(text
                .split('}')
                .filter_map(|obj| {
                    let num = |k: &str| -> Option<u32> {
                        let at = obj.find(&format!("\"{k}\":"))? + k.len() + 3;
                        obj[at..]
                            .trim_start()
                            .split(|c: char| !c.is_ascii_digit())
                            .next()?
                            .parse()
                            .ok()
                    };
                    Some((num("id")?, num(key).unwrap_or(0)))
                })
                .collect())
        };
        let mut alive = Vec::new();
        for (id, _) in ids(&["prog", "show", "-j"], "id")? {
            if self.prog_ids.contains(&id) {
                alive.push(format!("program {id}"));
            }
        }
        for (id, prog) in ids(&["link", "show", "-j"], "prog_id")? {
            if self.link_ids.contains(&id) || self.prog_ids.contains(&prog) {
                alive.push(format!("link {id} (program {prog})"));
            }
        }
        Ok(alive)
    }
}

/// One message line of `capture inspect`: what tests compare recordings by.
#[derive(Debug)]
pub struct Inspected {
    pub conn: String,
    pub id: u64,
    /// (method, URI) for requests.
    pub request: Option<(String, String)>,
    /// The request a response answers.
    pub answers: Option<u64>,
}

/// `capture ARGS --data-dir DIR` (a command on stored recordings); its stdout.
pub fn run_with_data_dir(args: &[&str], data_dir: &std::path::Path) -> Result<String> {
    let out = crate::run_ok(
        std::process::Command::new(crate::capture_bin())
            .args(args)
            .arg("--data-dir")
            .arg(data_dir),
    )?;
    Ok(String::from_utf8(out.stdout)?)
}

pub fn inspect(name: &str, data_dir: &std::path::Path) -> Result<Vec<Inspected>> {
    let out = crate::run_ok(
        std::process::Command::new(crate::capture_bin())
            .args(["inspect", name, "--data-dir"])
            .arg(data_dir),
    )?;
    let text = String::from_utf8(out.stdout)?;
    text.lines().map(parse_inspected).collect()
}

/// `TIME conn=C id=I SRC > DST request METHOD URI body=N node=X` or
/// `TIME conn=C id=I SRC > DST response STATUS to=R body=N node=X`.
pub fn parse_inspected(line: &str) -> Result<Inspected> {
    let f: Vec<&str> = line.split(' ').collect();
    let field = |i: usize, key: &str| -> Result<String> {
        f.get(i)
            .and_then(|v| v.strip_prefix(key))
            .map(str::to_string)
            .with_context(|| format!("no {key} in {line:?}"))
    };
    let conn = field(1, "conn=")?;
    let id: u64 = field(2, "id=")?.parse()?;
    let (request, answers) = match f.get(6).copied() {
        Some("request") => {
            let method = f.get(7).context("no method")?.to_string();
            let uri = f.get(8).context("no URI")?.to_string();
            (Some((method, uri)), None)
        }
        Some("response") => (None, field(8, "to=").ok().and_then(|r| r.parse().ok())),
        _ => anyhow::bail!("unexpected inspect line {line:?}"),
    };
    Ok(Inspected {
        conn,
        id,
        request,
        answers,
    })
}
