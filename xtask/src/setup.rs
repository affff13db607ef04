//! Installs what each command needs, only when missing, printing nothing when everything
//! is already there.
//!
//! Three levels, so that a first `cargo xtask run` pays only for the build:
//! - [`ensure_build`]: what building `capture` needs (nightly rust-src, bpf-linker);
//! - [`ensure_broker`]: the build plus tansu, the local Kafka-protocol broker;
//! - [`ensure_test_peers`]: everything the tests and benchmarks run against (Debian
//!   packages, tansu, Python packages, the manifest validator).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Debian packages: the real peers of the tests (servers, clients, capture tools) and the
/// tools the tests inspect the kernel with.
const APT_PACKAGES: &[&str] = &[
    "nginx",
    "curl",
    "openssl",
    "wrk",
    // h2load: multiplexed HTTP/2 load, the h2c peer of the HTTP/2 tests and benchmark.
    "nghttp2-client",
    "tshark",
    "tcpdump",
    "iproute2",
    "bpftool",
    "ethtool",
    "sqlite3",
    "util-linux",
    "procps",
    // The replay report is checked as a person sees it: headless Chromium loads the page, with
    // a font to draw its text in the screenshot.
    "chromium",
    "fonts-dejavu-core",
];

/// What building `capture` needs, and all that running it needs: the eBPF crate is built
/// with nightly's `core` from source and linked by bpf-linker.
pub fn ensure_build() -> Result<()> {
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()
}

/// The build plus the local broker (`cargo xtask broker`): tansu, and sqlite3 to index its
/// database.
pub fn ensure_broker() -> Result<()> {
    ensure_build()?;
    ensure_apt(&["sqlite3"])?;
    ensure_tansu()
}

/// Everything the tests and benchmarks use, in dependency order.
pub fn ensure_test_peers() -> Result<()> {
    ensure_apt(APT_PACKAGES)?;
    ensure_build()?;
    ensure_tansu()?;
    ensure_python_packages()?;
    ensure_kubernetes_validator()
}

/// tansu, the Kafka-protocol broker the tests (and `cargo xtask broker`) run on loopback.
/// Built with its sqlite engine, the one verified to work (shared/TOOLCHAIN.md).
fn ensure_tansu() -> Result<()> {
    let bin = cargo_home().join("bin/tansu");
    let works = succeeds(Command::new(&bin).arg("--version"));
    if works {
        return Ok(());
    }
    eprintln!(
        "xtask: building tansu, a Kafka-protocol broker for the tests (about 8 minutes on 2 cores)"
    );
    quiet(
        Command::new("cargo").args([
            "install",
            "tansu",
            "--locked",
            "--features",
            "dynostore,libsql",
        ]),
        "cargo install tansu",
    )
}

/// Python packages the tests use as independent peers: confluent-kafka (offsets cross-check),
/// prometheus-client (the reference parser of the agent's /metrics text), grpcio and h2 (the
/// gRPC and raw HTTP/2 peers) and openapi-spec-validator (the reference validator of the
/// agent's OpenAPI document), psycopg2-binary (for the OpenSSL 3.5 its wheel bundles).
const PYTHON_PACKAGES: &[(&str, &str, &str)] = &[
    (
        "confluent_kafka",
        "confluent-kafka",
        "independent Kafka offsets check",
    ),
    (
        "prometheus_client",
        "prometheus-client",
        "reference /metrics parser",
    ),
    (
        "grpc",
        "grpcio",
        "gRPC server and client (tests/peers/h2/grpc_peer.py)",
    ),
    (
        "h2",
        "h2",
        "raw HTTP/2 and h2c-upgrade peers (tests/peers/h2/)",
    ),
    (
        "psycopg2",
        "psycopg2-binary==2.9.13",
        "a second OpenSSL build (3.5, bundled in the wheel) for the --tls probe-site test",
    ),
    (
        "openapi_spec_validator",
        "openapi-spec-validator",
        "reference OpenAPI validator for the agent's /v1/openapi.json",
    ),
];

fn ensure_python_packages() -> Result<()> {
    for (module, package, why) in PYTHON_PACKAGES {
        let present = succeeds(Command::new("python3").args(["-c", &format!("import {module}")]));
        if present {
            continue;
        }
        eprintln!("xtask: installing the {package} Python package ({why})");
        quiet(
            Command::new("python3").args(["-m", "pip", "install", "-q", package]),
            &format!("pip install {package}"),
        )?;
    }
    Ok(())
}

/// kubernetes-validate checks deploy/kubernetes against the Kubernetes schemas it bundles,
/// offline (no cluster, no schema download). Pinned: the bundled schemas decide which
/// Kubernetes versions tests/tests/deploy_manifests.rs can name, so moving to a newer
/// Kubernetes is a deliberate change of both.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

fn ensure_kubernetes_validator() -> Result<()> {
    let installed =
        capture_stdout(Command::new("python3").args(["-m", "kubernetes_validate", "--version"]))
            .is_ok_and(|v| v.trim() == KUBERNETES_VALIDATE_VERSION);
    if installed {
        return Ok(());
    }
    eprintln!(
        "xtask: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (checks the Kubernetes manifests offline)"
    );
    let package = format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}");
    quiet(
        Command::new("python3").args(["-m", "pip", "install", "-q", &package]),
        &format!("pip install {package}"),
    )
}

fn ensure_apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    quiet(
        root_command("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    quiet(
        root_command("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_nightly_rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    eprintln!(
        "xtask: installing rust-src for the nightly toolchain (eBPF builds core from source)"
    );
    quiet(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup component add rust-src --toolchain nightly (is the nightly toolchain installed? `rustup toolchain install nightly`)",
    )
}

/// Cargo's home (where `cargo install` puts binaries).
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker must link against the same LLVM major as nightly rustc. Debian has no LLVM
/// that new, so it is built against the libLLVM shared library rustup ships with nightly
/// (recipe in ../shared/TOOLCHAIN.md). A nightly update breaks the library link, which the
/// `--version` probe notices, and the linker is rebuilt.
fn ensure_bpf_linker() -> Result<()> {
    let works = succeeds(Command::new("bpf-linker").arg("--version"));
    if works {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker against nightly's LLVM (about a minute)");
    let sysroot = capture_stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let llvm_so = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}; is nightly complete?",
                lib_dir.display()
            )
        })?;
    let version = capture_stdout(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc did not report its LLVM version")?
        .to_string();
    let prefix = cargo_home().join("bpf-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let so_name = llvm_so
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(so_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm_so, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    quiet(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
        "cargo install bpf-linker",
    )
}

/// cargo-fuzz, for `cargo xtask fuzz` only (not needed by the tests).
pub fn ensure_cargo_fuzz() -> Result<()> {
    let present = succeeds(Command::new("cargo").args(["fuzz", "--version"]));
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (a few minutes)");
    quiet(
        Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]),
        "cargo install cargo-fuzz",
    )
}

/// Runs a probe command silently; true when it exits successfully.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command run as root: directly when we are root, else through sudo.
fn root_command(program: &str) -> Command {
    if crate::is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

/// Runs a command with its output captured; shows the output only if it fails.
fn quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn capture_stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout).context("command printed non-UTF-8")
}
