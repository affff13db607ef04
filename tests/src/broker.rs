//! tansu, a Kafka-protocol broker (crates.io; installed by `cargo xtask setup`), started per
//! test on a free loopback port with its sqlite storage in a temporary directory. (Its memory
//! storage is faster but lost offsets here: a 600,000-message window read back 443,875.)

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
    /// Network namespace it runs in (None: the test's own).
    netns: Option<String>,
    /// Address it listens on and advertises.
    host: String,
}

fn tansu_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin/tansu")
}

impl Tansu {
    /// Starts a broker with fresh storage on a free port of this namespace.
    pub fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start_at(None, port)
    }

    /// Starts a broker inside network namespace `ns` (reachable on its loopback), for
    /// recorders that run there.
    pub fn start_in(ns: &str) -> Result<Self> {
        Self::start_at(Some(ns.to_string()), 9092)
    }

    /// Starts a broker inside namespace `ns` listening on `ip` (an address of that namespace),
    /// so clients in other namespaces that route to `ip` reach it too.
    pub fn start_on(ns: &str, ip: &str) -> Result<Self> {
        let mut broker = Tansu {
            child: None,
            dir: tempfile::tempdir()?,
            port: 9092,
            netns: Some(ns.to_string()),
            host: ip.to_string(),
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn start_at(netns: Option<String>, port: u16) -> Result<Self> {
        let mut broker = Tansu {
            child: None,
            dir: tempfile::tempdir()?,
            port,
            netns,
            host: "127.0.0.1".to_string(),
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn listening(&self) -> bool {
        match &self.netns {
            None => std::net::TcpStream::connect((self.host.as_str(), self.port)).is_ok(),
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", ns, "ss", "-Htln"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .contains(&format!("{}:{} ", self.host, self.port))
                })
                .unwrap_or(false),
        }
    }

    /// `host:port` to give clients.
    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("tcp://{}:{}", self.host, self.port);
        let mut cmd = match &self.netns {
            None => Command::new(tansu_bin()),
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(tansu_bin());
                cmd
            }
        };
        let child = cmd
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
        while !self.listening() {
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

/// Every record of `topic` (values and headers), read back with confluent-kafka.
const PY_DUMP: &str = r#"
import sys
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic = sys.argv[1], sys.argv[2]
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "dump", "enable.auto.commit": False})
meta = c.list_topics(topic, timeout=10)
out = sys.stdout.buffer
for p in meta.topics[topic].partitions:
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    if hi <= lo:
        continue
    c.assign([TopicPartition(topic, p, lo)])
    seen = lo
    while seen < hi:
        m = c.poll(10)
        if m is None:
            raise SystemExit(f"timeout at partition {p} offset {seen}")
        if m.error():
            raise SystemExit(str(m.error()))
        seen = m.offset() + 1
        out.write(m.value() or b"")
        for _, v in m.headers() or []:
            out.write(v or b"")
c.close()
"#;

/// Every record of `topic` (values and headers, concatenated), read with confluent-kafka from
/// namespace `ns`: what a test greps for bytes that must never reach the topic.
pub fn dump_topic(ns: &str, bootstrap: &str, topic: &str) -> anyhow::Result<Vec<u8>> {
    let out = crate::run_ok(
        crate::netns::Topology::exec(ns, "python3").args(["-c", PY_DUMP, bootstrap, topic]),
    )?;
    Ok(out.stdout)
}
