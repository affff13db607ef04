//! tansu, a Kafka-protocol broker (crates.io; installed by `cargo xtask setup`), started per
//! test on a free loopback port with its sqlite storage in a temporary directory.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running broker; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Tansu {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

fn tansu_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin/tansu")
}

impl Tansu {
    /// Starts a broker with fresh storage.
    pub fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut broker = Tansu {
            child: None,
            dir: tempfile::tempdir()?,
            port,
        };
        broker.spawn()?;
        Ok(broker)
    }

    /// `host:port` to give clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--storage-engine",
                "sqlite://tansu.db",
                "--listener-url",
                &url,
            ])
            .args(["--advertised-listener-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tansu (installed by `cargo xtask setup`)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!("tansu did not listen on {} within 20 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Without this index tansu's reads grow quadratically (see shared/TOOLCHAIN.md).
        let db = self.dir.path().join("tansu.db");
        while !db.exists() {
            if Instant::now() > deadline {
                bail!("tansu created no database");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = Command::new("sqlite3")
                .arg(&db)
                .arg("create index if not exists header_topition_offset on header(topition, offset_id);")
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            last = String::from_utf8_lossy(&out.stderr).to_string();
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("adding tansu's index failed: {last}")
    }

    /// Stops the broker (SIGTERM) and waits for it; its data stays.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts the broker again on the same port and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
