//! The embedded store's log with real processes and real files: two writer processes on one
//! data directory, a writer killed with SIGKILL (and its last batch torn), and a disk that
//! fills up (a small tmpfs) — what was written stays readable, counts match what reads back,
//! and reading works with no free space at all.
//!
//! Child processes are this test binary run again on the ignored test `child_writer`, told
//! what to do through `EMBEDDED_CHILD_*` variables.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use capture_user::message::{HttpMessage, HttpVersion, MessageKind};
use capture_user::packet::Timestamp;
use capture_user::store::embedded::{EmbeddedConfig, EmbeddedStore, TORN_TAIL_DROP};
use capture_user::store::{Ending, RecordingState, RecordingSummary, Store, StoreError};

/// A request with a pseudo-random body (LZ4 cannot shrink it).
fn message(id: u64, body: usize) -> HttpMessage {
    let mut bytes = format!("PUT /o/{id} HTTP/1.1\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    bytes.extend((0..body).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    let addr: SocketAddr = "10.1.0.1:5000".parse().unwrap();
    HttpMessage {
        id,
        conn_id: id % 11,
        kind: MessageKind::Request {
            method: "PUT".into(),
            uri: format!("/o/{id}").into(),
        },
        version: HttpVersion::Http11,
        request_id: None,
        first_ts: Timestamp(id),
        last_ts: Timestamp(id + 1),
        src: addr,
        dst: "10.1.0.2:80".parse().unwrap(),
        bytes: Bytes::from(bytes),
        body_len: body as u64,
        complete: true,
    }
}

fn small_config() -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: 64 << 10,
        batch_bytes: 4 << 10,
        ..EmbeddedConfig::default()
    }
}

/// Ids of a recording, checking every message's bytes.
fn read_ids(store: &mut EmbeddedStore, name: &str, body: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    store
        .read(name, &mut |m| {
            assert_eq!(
                m.bytes,
                message(m.meta.id, body).bytes,
                "{name}: message {}",
                m.meta.id
            );
            ids.push(m.meta.id);
            true
        })
        .expect("read");
    ids
}

/// What a child does, from its environment.
#[test]
#[ignore = "run by the other tests as a child process"]
fn child_writer() {
    let Ok(dir) = std::env::var("EMBEDDED_CHILD_DIR") else {
        return;
    };
    let var = |k: &str| std::env::var(format!("EMBEDDED_CHILD_{k}")).unwrap();
    let (name, mode) = (var("NAME"), var("MODE"));
    let first: u64 = var("FIRST").parse().unwrap();
    let count: u64 = var("COUNT").parse().unwrap();
    let mut store = EmbeddedStore::open_with(Path::new(&dir), small_config()).unwrap();
    store.begin(&name, "child").unwrap();
    println!("ready");
    let go = Path::new(&dir).join("go");
    while !go.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let tags = vec![name.clone()];
    for id in first..first + count {
        store.append(&message(id, 200), &tags).unwrap();
        if id % 20 == 0 {
            store.flush().unwrap();
        }
    }
    store.flush().unwrap();
    if mode == "end" {
        store.end(&name, RecordingSummary::default()).unwrap();
        println!("done");
    } else {
        println!("flushed");
        std::thread::sleep(Duration::from_secs(600));
    }
}

/// Starts a child writer and waits for its line `ready`.
fn spawn_child(
    dir: &Path,
    name: &str,
    mode: &str,
    first: u64,
    count: u64,
) -> (Child, impl BufRead) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EMBEDDED_CHILD_DIR", dir)
        .env("EMBEDDED_CHILD_NAME", name)
        .env("EMBEDDED_CHILD_MODE", mode)
        .env("EMBEDDED_CHILD_FIRST", first.to_string())
        .env("EMBEDDED_CHILD_COUNT", count.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    wait_line(&mut out, "ready");
    (child, out)
}

fn wait_line(out: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child ended before {want:?}"
        );
        // The test harness prints "test child_writer ... " before the child's first line.
        if line.trim().ends_with(want) {
            return;
        }
    }
}

#[test]
fn two_writer_processes_interleave_batches_and_both_recordings_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Their stdout is kept open until they exit (a closed pipe would fail their prints).
    let (mut a, _a_out) = spawn_child(dir.path(), "p1", "end", 1, 3000);
    let (mut b, _b_out) = spawn_child(dir.path(), "p2", "end", 100_001, 3000);
    std::fs::write(dir.path().join("go"), b"").unwrap();
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());

    let mut store = EmbeddedStore::open_with(dir.path(), small_config()).unwrap();
    assert_eq!(
        read_ids(&mut store, "p1", 200),
        (1..=3000).collect::<Vec<_>>()
    );
    assert_eq!(
        read_ids(&mut store, "p2", 200),
        (100_001..=103_000).collect::<Vec<_>>()
    );
    for name in ["p1", "p2"] {
        let rec = store.get(name).unwrap();
        assert_eq!((rec.state, rec.messages), (RecordingState::Complete, 3000));
    }
    // The windows overlap: the two processes' batches really interleaved.
    let (p1, p2) = (store.get("p1").unwrap(), store.get("p2").unwrap());
    assert!(p1.start[&0] < p2.end.unwrap()[&0] && p2.start[&0] < p1.end.unwrap()[&0]);
    let segments = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(
        segments > 4,
        "{segments} segments: the log should have rolled"
    );
}

fn last_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn a_writer_killed_mid_batch_leaves_an_interrupted_recording_counting_what_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open_with(dir.path(), small_config()).unwrap();
    store.begin("before", "t").unwrap();
    for id in 1..=100 {
        store
            .append(&message(id, 200), &["before".to_string()])
            .unwrap();
    }
    store.end("before", RecordingSummary::default()).unwrap();

    let (mut child, mut out) = spawn_child(dir.path(), "killed", "hang", 1_001, 500);
    std::fs::write(dir.path().join("go"), b"").unwrap();
    wait_line(&mut out, "flushed");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();

    // As if it died inside write(2): its last batch is cut short.
    let seg = last_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 700)
        .unwrap();

    let mut lister = EmbeddedStore::open_with(dir.path(), small_config()).unwrap();
    let rec = lister.get("killed").unwrap();
    assert_eq!(rec.state, RecordingState::Interrupted);
    let ids = read_ids(&mut lister, "killed", 200);
    assert!(ids.len() < 500 && ids.len() > 400, "{}", ids.len());
    assert_eq!(ids, (1_001..1_001 + ids.len() as u64).collect::<Vec<_>>());
    let bytes: u64 = ids
        .iter()
        .map(|&id| message(id, 200).bytes.len() as u64)
        .sum();
    assert_eq!((rec.messages, rec.bytes), (ids.len() as u64, bytes));
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len - 700,
        "a lister never cuts"
    );

    // The next writer cuts the torn batch and counts what it held.
    store.begin("after", "t").unwrap();
    store
        .append(&message(9_999, 200), &["after".to_string()])
        .unwrap();
    store.end("after", RecordingSummary::default()).unwrap();
    let rec = store.get("killed").unwrap();
    assert_eq!(
        rec.drops.get(TORN_TAIL_DROP).copied(),
        Some(500 - ids.len() as u64)
    );
    assert_eq!(read_ids(&mut store, "killed", 200), ids);
    assert_eq!(
        read_ids(&mut store, "before", 200),
        (1..=100).collect::<Vec<_>>()
    );
    assert_eq!(read_ids(&mut store, "after", 200), vec![9_999]);
}

/// A small tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Fills the filesystem at `dir` until a write fails.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[1u8]).is_ok() {}
}

/// Appends 1000-byte messages to `name` (flushing every 50) until the store refuses one.
fn append_until_error(store: &mut EmbeddedStore, name: &str) -> StoreError {
    let tags = vec![name.to_string()];
    for id in 1..=20_000 {
        let stored = store
            .append(&message(id, 1000), &tags)
            .and_then(|()| if id % 50 == 0 { store.flush() } else { Ok(()) });
        if let Err(e) = stored {
            return e;
        }
    }
    panic!("20 MB of messages did not fill the disk");
}

#[test]
fn a_full_disk_fails_the_recording_honestly_and_reading_needs_no_space() {
    let Some(fs) = Tmpfs::mount("12m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let config = EmbeddedConfig {
        segment_bytes: 1 << 20,
        batch_bytes: 64 << 10,
        ..EmbeddedConfig::default()
    };
    let mut store = EmbeddedStore::open_with(fs.path(), config.clone()).unwrap();
    store.begin("full", "t").unwrap();
    assert!(fs.path().join("ballast").exists());
    let started = Instant::now();
    let error = append_until_error(&mut store, "full");
    assert!(error.is_disk_full(), "{error}");
    assert!(error.to_string().contains("filesystem is full"), "{error}");
    assert!(
        !fs.path().join("ballast").exists(),
        "the ballast is released"
    );
    let tags = vec!["full".to_string()];
    assert!(matches!(
        store.append(&message(1, 1), &tags),
        Err(StoreError::Backend { .. })
    ));
    let committed = store.committed("full").unwrap();
    assert!(committed.messages > 1000, "{committed:?}");
    let summary = RecordingSummary {
        ending: Ending::Failed(error.to_string()),
        ..RecordingSummary::default()
    };
    let rec = store
        .end("full", summary)
        .expect("ending works on a full disk");
    assert_eq!(rec.state, RecordingState::Failed);
    assert!(
        rec.reason
            .as_deref()
            .unwrap_or("")
            .contains("No space left"),
        "{rec:?}"
    );
    assert_eq!(
        (rec.messages, rec.bytes),
        (committed.messages, committed.bytes)
    );
    drop(store);

    // Not a byte left: a new handle lists and reads everything that was committed.
    fill(fs.path());
    let mut reader = EmbeddedStore::open_with(fs.path(), config.clone()).unwrap();
    let listed = reader.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, RecordingState::Failed);
    let ids = read_ids(&mut reader, "full", 1000);
    assert_eq!(ids, (1..=committed.messages).collect::<Vec<_>>());
    let bytes: u64 = ids
        .iter()
        .map(|&id| message(id, 1000).bytes.len() as u64)
        .sum();
    assert_eq!(bytes, committed.bytes);

    // Space comes back: the next recording works and the ballast is made again.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    reader.begin("later", "t").unwrap();
    reader
        .append(&message(1, 10), &["later".to_string()])
        .unwrap();
    reader.end("later", RecordingSummary::default()).unwrap();
    assert_eq!(
        std::fs::metadata(fs.path().join("ballast")).unwrap().len(),
        4 << 20
    );
    eprintln!("filled 12 MiB in {:?}", started.elapsed());
}
