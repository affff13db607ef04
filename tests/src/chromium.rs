//! Headless Chromium (installed by `cargo xtask setup`): reports are checked as a person
//! sees them, by the DOM Chromium builds and a screenshot saved for a person to look at.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};

use crate::workspace_root;

/// Runs headless Chromium with `args` and a profile in `scratch`.
fn chromium(scratch: &Path, args: &[&str]) -> Result<Output> {
    let profile: PathBuf = scratch.join("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .env("HOME", scratch)
        .output()
        .context("running chromium (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!(
            "chromium {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The DOM of the page at `page` once Chromium has loaded it.
pub fn dump_dom(page: &Path, scratch: &Path) -> Result<String> {
    let url = format!("file://{}", page.display());
    let out = chromium(scratch, &["--dump-dom", &url])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies `page` to target/test-artifacts/NAME.html and saves its screenshot (1280 px wide,
/// `height` tall) beside it as NAME.png, for a person to look at; the screenshot's path.
pub fn save_screenshot(page: &Path, name: &str, height: u32, scratch: &Path) -> Result<PathBuf> {
    let artifacts = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    std::fs::copy(page, artifacts.join(format!("{name}.html")))?;
    let shot = artifacts.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&shot);
    chromium(
        scratch,
        &[
            &format!("--window-size=1280,{height}"),
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
            &format!("file://{}", page.display()),
        ],
    )?;
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "the screenshot is {} bytes",
        png.len()
    );
    println!("report screenshot: {}", shot.display());
    Ok(shot)
}
