//! Helpers shared by the integration tests: where the `capture` binary is, where the shared
//! pcaps are, and running commands with clear failures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// The `capture` binary under test: `$CAPTURE_BIN` if set, else `target/debug/capture`
/// (`cargo xtask test` builds it before running the tests).
pub fn capture_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CAPTURE_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join("capture");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p capture-user` or run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// The shared real-world captures (`../shared/pcaps/zeek-http` next to the repository).
pub fn zeek_pcaps_dir() -> PathBuf {
    let dir = workspace_root()
        .parent()
        .expect("workspace has a parent")
        .join("shared/pcaps/zeek-http");
    assert!(dir.is_dir(), "{} missing", dir.display());
    dir
}

/// Runs a command to completion and fails with its stderr when it exits non-zero.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

pub mod capture;
pub mod netns;
pub mod nginx;
