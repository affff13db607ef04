//! Recording under wrk load against nginx in a network namespace, nginx's access log as the
//! ground truth: what a recording holds with framing spread over threads, and how it ends
//! (SIGKILL, a full disk, its own limits, the store's retention cap) with counts that equal
//! what reads back and nothing left attached.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tests::capture::{CaptureRun, inspect};
use tests::netns::Topology;
use tests::nginx::{AccessLogEntry, Nginx};
use tests::{capture_bin, multiset, run_ok};

const PORT: u16 = 8080;

/// How long a recording that stops by itself (a limit, a full disk) may take under wrk load,
/// with the other tests sharing the machine's two cores.
const ENDS_BY_ITSELF: Duration = Duration::from_secs(120);

/// wrk's counter in a unique URI (`...&n=123`): increases with every request a wrk thread
/// sends, so it increases along each connection.
fn wrk_counter(uri: &str) -> Result<u64> {
    let n = uri
        .rsplit_once("n=")
        .map(|(_, n)| n)
        .with_context(|| format!("no n= in {uri}"))?;
    Ok(n.parse()?)
}

/// wrk running in the background (for recordings that end by themselves), killed on drop.
struct Load(Child);

impl Load {
    fn start(topo: &Topology, seconds: u32, script: &Path) -> Result<Self> {
        let child = topo
            .client("wrk")
            .args(["-t2", "-c16", &format!("-d{seconds}s"), "-s"])
            .arg(script)
            .arg(format!("http://{}:{PORT}/", topo.server_ip))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wrk")?;
        Ok(Self(child))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A topology with nginx, a data directory and wrk's unique-URI script.
struct Bench {
    topo: Topology,
    nginx: Nginx,
    data: tempfile::TempDir,
    script: PathBuf,
}

impl Bench {
    fn new(tag: &str) -> Result<Self> {
        let topo = Topology::new(tag)?;
        let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
        let data = tempfile::tempdir()?;
        let script = data.path().join("unique.lua");
        std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;
        Ok(Self {
            topo,
            nginx,
            data,
            script,
        })
    }

    /// `capture record` on the client's veth into `dir`, with `extra` flags.
    fn record(&self, name: &str, dir: &Path, extra: &[&str]) -> Result<CaptureRun> {
        let mut args = vec!["--data-dir".to_string(), dir.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        CaptureRun::record(&self.topo.client_ns, &self.topo.client_if, name, &args)
    }

    fn load(&self, seconds: u32) -> Result<Load> {
        Load::start(&self.topo, seconds, &self.script)
    }

    fn assert_nothing_attached(&self) -> Result<()> {
        let left = Topology::attachments(&self.topo.client_ns, &self.topo.client_if)?.leftovers();
        ensure!(left.is_empty(), "left attached: {left:?}");
        Ok(())
    }
}

use tests::capture::run_with_data_dir as capture;

/// The catalog entry as JSON.
fn show(name: &str, dir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&capture(
        &["recordings", "show", name, "--json"],
        dir,
    )?)?)
}

/// The entry's message count, which must equal what reads back.
fn assert_count_is_readable(name: &str, dir: &Path) -> Result<u64> {
    let entry = show(name, dir)?;
    let counted = entry["messages"].as_u64().context("no message count")?;
    let readable = inspect(name, dir)?.len() as u64;
    ensure!(
        counted == readable,
        "{name}: entry counts {counted}, {readable} read back: {entry}"
    );
    Ok(counted)
}

fn wrk(topo: &Topology, seconds: u32, script: &Path) -> Result<()> {
    run_ok(
        topo.client("wrk")
            .args(["-t2", "-c16", &format!("-d{seconds}s"), "-s"])
            .arg(script)
            .arg(format!("http://{}:{PORT}/", topo.server_ip)),
    )?;
    Ok(())
}

fn answered(log: &[AccessLogEntry]) -> impl Iterator<Item = (String, String)> + '_ {
    log.iter().map(|e| (e.method.clone(), e.uri.clone()))
}

#[test]
fn two_framing_threads_record_exactly_the_access_log_with_each_connection_in_order() -> Result<()> {
    let bench = Bench::new("thr")?;
    let data = bench.data.path();
    let run = bench.record("threads2", data, &["--threads", "2"])?;
    wrk(&bench.topo, 10, &bench.script)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = run.stop(libc::SIGINT)?;
    ensure!(out.status.success(), "record: {}", out.stderr.join("\n"));

    let log = bench.nginx.access_log()?;
    ensure!(log.len() > 1000, "wrk made only {} requests", log.len());
    let messages = inspect("threads2", data)?;
    let requests: Vec<(String, String)> =
        messages.iter().filter_map(|m| m.request.clone()).collect();
    assert_eq!(requests.len(), log.len(), "{:?}", out.stderr);
    assert_eq!(multiset(requests), multiset(answered(&log)));

    // Ids are unique across the threads, and every connection's requests are stored in the
    // order wrk sent them, each response after the request it answers.
    let ids = multiset(messages.iter().map(|m| m.id));
    assert!(ids.values().all(|n| *n == 1), "duplicate ids");
    let mut last_n: HashMap<&str, u64> = HashMap::new();
    let mut seen: HashMap<u64, &str> = HashMap::new();
    for m in &messages {
        if let Some((_, uri)) = &m.request {
            let n = wrk_counter(uri)?;
            let previous = last_n.insert(&m.conn, n);
            assert!(
                previous.is_none_or(|p| p < n),
                "connection {} out of order: {previous:?} then {n}",
                m.conn
            );
            seen.insert(m.id, &m.conn);
        } else if let Some(request) = m.answers {
            assert_eq!(
                seen.get(&request).copied(),
                Some(m.conn.as_str()),
                "response {} before or away from its request {request}",
                m.id
            );
        }
    }
    assert!(last_n.len() >= 16, "{} connections", last_n.len());
    Ok(())
}

#[test]
fn a_recorder_killed_under_load_leaves_an_entry_counting_exactly_what_reads_back() -> Result<()> {
    let bench = Bench::new("kil")?;
    let run = bench.record("killed", bench.data.path(), &[])?;
    let load = bench.load(6)?;
    std::thread::sleep(Duration::from_secs(3));
    let out = run.stop(libc::SIGKILL)?;
    drop(load);
    ensure!(!out.status.success(), "SIGKILL should end it");
    let entry = show("killed", bench.data.path())?;
    assert_eq!(entry["state"], "interrupted", "{entry}");
    let counted = assert_count_is_readable("killed", bench.data.path())?;
    assert!(counted > 1000, "only {counted} messages before the kill");
    bench.assert_nothing_attached()
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mib: u32) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(dir.path()),
        )?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Takes whatever space is left, so nothing more can be written.
    fn fill(&self) -> Result<()> {
        use std::io::Write as _;
        let mut filler = std::fs::File::create(self.path().join("filler"))?;
        let block = vec![0u8; 64 << 10];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.write_all(&[0u8; 512]);
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_ends_the_recording_failed_with_one_line_and_reading_still_works() -> Result<()> {
    let bench = Bench::new("ful")?;
    let disk = Tmpfs::mount(20)?;
    let run = bench.record("full", disk.path(), &["--max-store-size", "unlimited"])?;
    let load = bench.load(60)?;
    let out = run.finish_within(ENDS_BY_ITSELF)?; // once the disk is full
    drop(load);
    ensure!(!out.status.success(), "{:?}", out.stderr);
    let errors: Vec<&String> = out
        .stderr
        .iter()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{:?}", out.stderr);
    assert!(
        errors[0].contains("No space left on device") && errors[0].contains("kept"),
        "{}",
        errors[0]
    );
    assert!(
        out.stderr
            .iter()
            .any(|l| l.starts_with("recording full: failed")),
        "{:?}",
        out.stderr
    );
    bench.assert_nothing_attached()?;

    // Not a byte free now: everything that reads still works.
    disk.fill()?;
    let entry = show("full", disk.path())?;
    assert_eq!(entry["state"], "failed", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("No space left")),
        "{entry}"
    );
    let counted = assert_count_is_readable("full", disk.path())?;
    assert!(counted > 1000, "only {counted} messages stored");
    let list = capture(&["recordings", "list"], disk.path())?;
    assert!(
        list.lines().any(|l| l.starts_with("full\tfailed\t")),
        "{list}"
    );
    let gor = bench.data.path().join("full.gor");
    capture(
        &["export", "full", "--gor", &gor.to_string_lossy()],
        disk.path(),
    )?;
    assert!(std::fs::metadata(&gor)?.len() > 0);
    let target = format!("http://{}:{PORT}", bench.topo.server_ip);
    let replayed = run_ok(
        bench
            .topo
            .client(&capture_bin().to_string_lossy())
            .args([
                "replay",
                "full",
                "--target",
                &target,
                "--max",
                "--json",
                "--quiet",
                "--exit-after",
                "3s",
            ])
            .arg("--data-dir")
            .arg(disk.path()),
    );
    // --exit-after may cut the replay short (exit 1 with requests not run); it must have
    // read the recording and sent requests, whatever the exit code.
    let text = match &replayed {
        Ok(out) => String::from_utf8_lossy(&out.stdout).to_string(),
        Err(e) => e.to_string(),
    };
    assert!(text.contains("\"sent\""), "{text}");
    Ok(())
}

#[test]
fn max_messages_and_max_size_end_the_recording_complete_at_the_limit() -> Result<()> {
    let bench = Bench::new("lim")?;
    let load = bench.load(30)?;
    let run = bench.record("by-count", bench.data.path(), &["--max-messages", "2000"])?;
    let out = run.finish_within(ENDS_BY_ITSELF)?;
    ensure!(out.status.success(), "{:?}", out.stderr);
    assert!(
        out.stderr
            .iter()
            .any(|l| l == "ended by itself: it reached its limit of 2000 messages"),
        "{:?}",
        out.stderr
    );
    let entry = show("by-count", bench.data.path())?;
    assert_eq!(entry["state"], "complete", "{entry}");
    assert_eq!(
        assert_count_is_readable("by-count", bench.data.path())?,
        2000
    );

    let run = bench.record("by-size", bench.data.path(), &["--max-size", "1MiB"])?;
    let out = run.finish_within(ENDS_BY_ITSELF)?;
    drop(load);
    ensure!(out.status.success(), "{:?}", out.stderr);
    let entry = show("by-size", bench.data.path())?;
    assert_eq!(entry["state"], "complete", "{entry}");
    let bytes = entry["bytes"].as_u64().context("no bytes")?;
    // Up to the limit, and short of it by less than one message (wrk's are under 3 KiB).
    assert!(
        bytes <= 1 << 20 && bytes > (1 << 20) - 3000,
        "{bytes} bytes"
    );
    assert_count_is_readable("by-size", bench.data.path())?;
    bench.assert_nothing_attached()
}

/// A GoReplay file of `n` requests with bodies LZ4 cannot shrink (random hex), `body` bytes
/// each, so a recording imported from it takes about `n * body` bytes of store.
fn incompressible_gor(path: &Path, n: usize, body: usize, seed: u64) -> Result<()> {
    use capture_user::files::gor::{GorPayload, write_payload};
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = seed | 1;
    for i in 0..n {
        let hex: String = (0..body)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b"0123456789abcdef"[(x & 15) as usize])
            })
            .collect();
        let request =
            format!("POST /r/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {body}\r\n\r\n{hex}");
        write_payload(
            &mut out,
            &GorPayload {
                kind: 1,
                id: format!("{seed:x}{i:08x}").into(),
                ts_ns: 1_700_000_000_000_000_000 + i as u64 * 1_000_000,
                latency_ns: 0,
                bytes: bytes::Bytes::from(request),
            },
        )?;
    }
    Ok(())
}

#[test]
fn retention_removes_the_oldest_recordings_first_and_never_a_running_one() -> Result<()> {
    let bench = Bench::new("ret")?;
    let dir = bench.data.path().join("store");
    let cap = ["--max-store-size", "4MiB"];
    // Three finished recordings of ~1.5 MiB each: the third pushes the store past 4 MiB.
    for (i, name) in ["oldest", "middle", "newest"].iter().enumerate() {
        let file = bench.data.path().join(format!("{name}.gor"));
        incompressible_gor(&file, 1500, 1000, i as u64 + 1)?;
        let file = file.to_string_lossy();
        let mut args = vec!["import", &file, "--name", name];
        args.extend(cap);
        capture(&args, &dir)?;
        std::thread::sleep(Duration::from_millis(20)); // distinct start times
    }
    let names = |dir: &Path| -> Result<Vec<String>> {
        Ok(capture(&["recordings", "list"], dir)?
            .lines()
            .filter_map(|l| l.split('\t').next().map(str::to_string))
            .collect())
    };
    assert_eq!(
        names(&dir)?,
        vec!["middle", "newest"],
        "the oldest goes first"
    );

    // A live recording that alone outgrows the cap: the finished ones go, it never does,
    // and it ends complete at the cap, counting what reads back.
    let load = bench.load(60)?;
    let run = bench.record("live", &dir, &cap)?;
    let out = run.finish_within(ENDS_BY_ITSELF)?;
    drop(load);
    ensure!(out.status.success(), "{:?}", out.stderr);
    assert_eq!(names(&dir)?, vec!["live"]);
    let entry = show("live", &dir)?;
    assert_eq!(entry["state"], "complete", "{entry}");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("size cap")),
        "{entry}"
    );
    assert_count_is_readable("live", &dir)?;
    bench.assert_nothing_attached()
}
