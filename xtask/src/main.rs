//! `cargo xtask`: the two commands a fresh machine needs.
//!
//! - `cargo xtask run -- ARGS` installs what is missing, builds, and runs `capture ARGS` as root.
//! - `cargo xtask test` installs what is missing, then runs fmt, clippy, unit and
//!   integration tests.
//!
//! Installing is idempotent and quiet when everything is already there.

mod setup;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Developer tasks for the capture workspace.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building, testing and benchmarking need (Debian packages, nightly
    /// rust-src, bpf-linker, tansu, Python packages). Quiet when everything is present.
    Setup,
    /// Build the `capture` binary (debug, or --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Install what the build needs (nightly rust-src, bpf-linker), build (release), and run
    /// `capture` with the given arguments as root. Test peers are left to `test`.
    ///
    /// Example: cargo xtask run -- packets --iface lo --port 8080 --duration 10s
    Run {
        /// Arguments for `capture`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then fmt check, clippy (-D warnings), unit and integration tests (as root).
    Test {
        /// Extra arguments: test name filters (`cargo xtask test -- five_mb`), or cargo test
        /// options before a `--` and filters after it (`cargo xtask test --test replay -- loop`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a local Kafka-protocol broker (tansu) on 127.0.0.1:9092 in the foreground, with
    /// its data in target/tansu. Then: capture record ... --kafka 127.0.0.1:9092
    Broker {
        /// Port to listen on.
        #[arg(long, default_value_t = 9092)]
        port: u16,
    },
    /// Fuzz the HTTP/1 framer, the HTTP/2 framer or the TCP reassembler with cargo-fuzz
    /// (installed if missing).
    ///
    /// Example: cargo xtask fuzz framer --seconds 60
    Fuzz {
        /// Fuzz target: framer, h2_framer or reassembler.
        target: String,
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Set up, build (release), and run the benchmarks, printing figures.
    ///
    /// Example: cargo xtask bench overhead --repeat 3
    Bench {
        /// Which benchmarks: all, ebpf, drain, store (store-embedded: without Kafka), replay
        /// (replay-diff: what --diff costs; replay-h2: an HTTP/2 recording next to h2load;
        /// replay-pool: a GoReplay file over 16 pooled connections next to wrk -c16), or
        /// overhead (what recording costs next to nginx, beside tcpdump, as a Markdown table;
        /// about 2 minutes a table), tls (--tls next to clear-text capture, then tls-idle)
        /// or tls-idle (what an idle --tls costs processes without TLS).
        #[arg(default_value = "all")]
        which: String,
        /// Options for the benchmark: for overhead, --repeat N (print N tables, the VM is
        /// noisy), --duration 10s (wrk's time per row) and --rows record,tcpdump (only
        /// those rows besides the baseline).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup::ensure_test_peers(),
        Task::Build { release } => build(release),
        Task::Run { args } => {
            setup::ensure_build()?;
            build(true)?;
            let bin = workspace_root().join("target/release/capture");
            let status = as_root(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        Task::Test { args } => test(&args),
        Task::Bench { which, args } => bench(&which, &args),
        Task::Fuzz { target, seconds } => fuzz(&target, seconds),
        Task::Broker { port } => broker(port),
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs a command and fails naming it when it does not succeed.
fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--quiet",
        "--package",
        "capture-user",
        "--bin",
        "capture",
    ]);
    if release {
        cmd.arg("--release");
    }
    check(&mut cmd, "building capture")
}

/// True when this process runs as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A command for `program`, through sudo when not already root (capture needs root).
fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env").arg(program);
        cmd
    }
}

fn test(extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the integration tests create network namespaces and load eBPF programs: run as root (sudo -E cargo xtask test)"
        );
    }
    setup::ensure_test_peers()?;
    step("cargo fmt --check");
    check(
        cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check (run `cargo fmt`)",
    )?;
    step("cargo clippy");
    check(
        cargo().args([
            "clippy",
            "--quiet",
            "--workspace",
            "--exclude",
            "capture-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        "cargo clippy",
    )?;
    step("build capture");
    build(false)?;
    let bin = workspace_root().join("target/debug/capture");
    step("unit and integration tests");
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "capture-ebpf",
        "--no-fail-fast",
    ])
    .env("CAPTURE_BIN", &bin);
    let (cargo_args, test_args) = match extra.iter().position(|a| a == "--") {
        Some(split) => (&extra[..split], &extra[split + 1..]),
        None => (&[][..], extra),
    };
    cmd.args(cargo_args).arg("--").args(test_args);
    check(&mut cmd, "cargo test")?;
    step("all tests passed");
    Ok(())
}

fn bench(which: &str, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and create namespaces: run as root");
    }
    setup::ensure_test_peers()?;
    build(true)?;
    let bin = workspace_root().join("target/release/capture");
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "tests",
        "--bin",
        "capture-bench",
        "--",
        which,
    ])
    .args(args.iter().filter(|a| *a != "--"))
    .env("CAPTURE_BIN", &bin);
    check(&mut cmd, "capture-bench")
}

fn broker(port: u16) -> Result<()> {
    setup::ensure_broker()?;
    let dir = workspace_root().join("target/tansu");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let url = format!("tcp://127.0.0.1:{port}");
    let bin = setup::cargo_home().join("bin/tansu");
    let mut child = Command::new(&bin)
        .current_dir(&dir)
        .args([
            "broker",
            "--storage-engine",
            "sqlite://tansu.db",
            "--listener-url",
            &url,
        ])
        .args(["--advertised-listener-url", &url])
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // The index tansu needs for windows to read in linear time (shared/TOOLCHAIN.md).
    let db = dir.join("tansu.db");
    for _ in 0..100 {
        if db.exists()
            && Command::new("sqlite3")
                .arg(&db)
                .arg("create index if not exists header_topition_offset on header(topition, offset_id);")
                .status()
                .is_ok_and(|s| s.success())
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!(
        "xtask: tansu listens on 127.0.0.1:{port} (data in {}); Ctrl-C stops it",
        dir.display()
    );
    let status = child.wait()?;
    if !status.success() {
        bail!("tansu exited with {status}");
    }
    Ok(())
}

fn fuzz(target: &str, seconds: u64) -> Result<()> {
    if !["framer", "h2_framer", "reassembler"].contains(&target) {
        bail!("unknown fuzz target {target:?}; use framer, h2_framer or reassembler");
    }
    setup::ensure_build()?;
    setup::ensure_cargo_fuzz()?;
    let dir = workspace_root().join("fuzz");
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    check(
        Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-max_len=65536",
            ]),
        "cargo fuzz run",
    )
}

fn step(what: &str) {
    eprintln!("xtask: {what}");
}
