//! The recording contract, one suite for every backend (see `store` module docs). Each
//! backend runs it through its own `#[test]` with a factory for fresh stores.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use capture_user::message::{HttpMessage, HttpVersion, MessageKind};
use capture_user::packet::Timestamp;
use capture_user::store::embedded::{EmbeddedConfig, EmbeddedStore};
use capture_user::store::kafka::{KafkaConfig, KafkaStore};
use capture_user::store::{RecordingState, RecordingSummary, Store, StoreError};
use tests::broker::Tansu;

fn message(id: u64, body_len: usize) -> HttpMessage {
    let mut bytes =
        format!("POST /m/{id} HTTP/1.1\r\nContent-Length: {body_len}\r\n\r\n").into_bytes();
    bytes.extend((0..body_len).map(|i| (i as u64 * 31 + id) as u8));
    let addr: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    HttpMessage {
        id,
        conn_id: id % 7,
        kind: MessageKind::Request {
            method: "POST".into(),
            uri: format!("/m/{id}").into(),
        },
        version: HttpVersion::Http11,
        request_id: None,
        first_ts: Timestamp(1_000 + id),
        last_ts: Timestamp(2_000 + id),
        src: addr,
        dst: "10.0.0.2:80".parse().unwrap(),
        bytes: Bytes::from(bytes),
        body_len: body_len as u64,
        complete: true,
    }
}

/// (id, bytes) of everything a recording reads back.
fn read_all(store: &mut dyn Store, name: &str) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    store
        .read(name, &mut |m| {
            out.push((m.meta.id, m.bytes.clone()));
            true
        })
        .expect("read");
    out
}

fn ids(read: &[(u64, Bytes)]) -> Vec<u64> {
    read.iter().map(|(id, _)| *id).collect()
}

fn tags(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// R1, then R2, and R3 overlapping R2: each reads exactly its own messages, twice alike.
fn overlapping_windows_are_exact(store: &mut dyn Store) {
    store.begin("r1", "test").unwrap();
    for id in 1..=5 {
        store.append(&message(id, 10), &tags(&["r1"])).unwrap();
    }
    store.end("r1", RecordingSummary::default()).unwrap();
    // Between recordings: stored for nobody.
    store.append(&message(100, 10), &[]).unwrap();
    store.flush().unwrap();

    store.begin("r2", "test").unwrap();
    for id in 6..=8 {
        store.append(&message(id, 10), &tags(&["r2"])).unwrap();
    }
    store.begin("r3", "test").unwrap();
    for id in 9..=11 {
        store
            .append(&message(id, 10), &tags(&["r2", "r3"]))
            .unwrap();
    }
    store.end("r2", RecordingSummary::default()).unwrap();
    for id in 12..=13 {
        store.append(&message(id, 10), &tags(&["r3"])).unwrap();
    }
    store.end("r3", RecordingSummary::default()).unwrap();

    assert_eq!(ids(&read_all(store, "r1")), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&read_all(store, "r2")), vec![6, 7, 8, 9, 10, 11]);
    assert_eq!(ids(&read_all(store, "r3")), vec![9, 10, 11, 12, 13]);
    for name in ["r1", "r2", "r3"] {
        let first = read_all(store, name);
        assert_eq!(
            first,
            read_all(store, name),
            "{name} reads differently twice"
        );
        for (id, bytes) in first {
            assert_eq!(
                bytes,
                message(id, 10).bytes,
                "{name}: message {id} bytes differ"
            );
        }
    }
    let listed: BTreeSet<String> = store.list().unwrap().into_iter().map(|r| r.name).collect();
    assert_eq!(
        listed,
        BTreeSet::from(["r1".into(), "r2".into(), "r3".into()])
    );
    for r in store.list().unwrap() {
        assert_eq!(r.state, RecordingState::Complete);
        assert!(r.end.is_some());
    }
}

/// Deleting a recording keeps what an overlapping one still needs.
fn delete_keeps_shared_messages(store: &mut dyn Store) {
    overlapping_windows_are_exact(store);
    store.delete("r2").unwrap();
    assert!(matches!(store.get("r2"), Err(StoreError::NotFound(_))));
    assert_eq!(ids(&read_all(store, "r3")), vec![9, 10, 11, 12, 13]);
    assert_eq!(ids(&read_all(store, "r1")), vec![1, 2, 3, 4, 5]);
}

/// Names are checked, and a name cannot be recorded twice.
fn names_are_validated_and_unique(store: &mut dyn Store) {
    assert!(matches!(
        store.begin("bad name", "t"),
        Err(StoreError::BadName(_))
    ));
    assert!(matches!(store.begin("", "t"), Err(StoreError::BadName(_))));
    store.begin("once", "t").unwrap();
    assert!(matches!(
        store.begin("once", "t"),
        Err(StoreError::Exists(_))
    ));
    store.end("once", RecordingSummary::default()).unwrap();
    assert!(matches!(
        store.begin("once", "t"),
        Err(StoreError::Exists(_))
    ));
    assert!(matches!(
        store.read("nope", &mut |_| true),
        Err(StoreError::NotFound(_))
    ));
}

/// A message far larger than the fragment limit comes back byte for byte.
fn large_messages_are_fragmented_and_rejoined(store: &mut dyn Store) {
    store.begin("big", "t").unwrap();
    // Appended in capture order, as a recorder does (reads return capture order).
    let at = |mut m: HttpMessage, ts: u64| {
        m.first_ts = Timestamp(ts);
        m
    };
    let big = at(message(1, 5_000_000), 5_002);
    store
        .append(&at(message(2, 3), 5_001), &tags(&["big"]))
        .unwrap();
    store.append(&big, &tags(&["big"])).unwrap();
    store
        .append(&at(message(3, 3), 5_003), &tags(&["big"]))
        .unwrap();
    store.end("big", RecordingSummary::default()).unwrap();
    let read = read_all(store, "big");
    assert_eq!(ids(&read), vec![2, 1, 3]);
    assert_eq!(read[1].1, big.bytes);
}

/// Metadata survives the round trip.
fn metadata_round_trips(store: &mut dyn Store) {
    store.begin("meta", "t").unwrap();
    let mut m = message(42, 5);
    m.kind = MessageKind::Response { status: 503 };
    m.request_id = Some(41);
    m.complete = false;
    store.append(&m, &tags(&["meta"])).unwrap();
    store.end("meta", RecordingSummary::default()).unwrap();
    let mut got = Vec::new();
    store
        .read("meta", &mut |s| {
            got.push(s.to_http());
            true
        })
        .unwrap();
    assert_eq!(got, vec![m]);
}

/// Reading stops as soon as `visit` says so, having handed on the start of the recording.
fn reading_stops_when_told(store: &mut dyn Store) {
    store.begin("stop", "t").unwrap();
    for id in 1..=20 {
        store.append(&message(id, 3), &tags(&["stop"])).unwrap();
    }
    store.end("stop", RecordingSummary::default()).unwrap();
    let mut seen = Vec::new();
    store
        .read("stop", &mut |m| {
            seen.push(m.meta.id);
            seen.len() < 4
        })
        .unwrap();
    assert_eq!(seen, vec![1, 2, 3, 4]);
}

fn run_contract(mut new_store: impl FnMut() -> Box<dyn Store>) {
    overlapping_windows_are_exact(new_store().as_mut());
    delete_keeps_shared_messages(new_store().as_mut());
    names_are_validated_and_unique(new_store().as_mut());
    large_messages_are_fragmented_and_rejoined(new_store().as_mut());
    metadata_round_trips(new_store().as_mut());
    reading_stops_when_told(new_store().as_mut());
}

/// The embedded store, its batches raw or LZ4-compressed, holds the contract.
fn embedded_contract(compress: bool) {
    let dirs: std::cell::RefCell<Vec<tempfile::TempDir>> = Default::default();
    run_contract(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = EmbeddedConfig {
            compress,
            ..Default::default()
        };
        // Small batches, so a recording spans many and a large message outgrows one.
        let store = EmbeddedStore::open_with(dir.path(), config)
            .unwrap()
            .with_batch_bytes(64 * 1024);
        dirs.borrow_mut().push(dir);
        Box::new(store)
    });
}

#[test]
fn embedded_store_keeps_the_recording_contract() {
    embedded_contract(false);
}

#[test]
fn embedded_store_with_lz4_keeps_the_recording_contract() {
    embedded_contract(true);
}

#[test]
fn kafka_store_keeps_the_recording_contract() {
    let broker = Tansu::start().expect("tansu");
    let mut n = 0;
    run_contract(|| {
        // A topic per case (fresh windows), a catalog per case (fresh names).
        n += 1;
        let mut config = KafkaConfig::new(&broker.bootstrap(), &format!("contract-{n}"));
        config.catalog_topic = format!("contract-catalog-{n}");
        config.fragment_bytes = 256 * 1024;
        Box::new(KafkaStore::open(config).expect("kafka store"))
    });
}

/// A window far longer than a partition's read-ahead (2,048 messages) comes back whole and in
/// capture order: connections take turns in bursts of 3,000 messages, so while one
/// partition's burst is handed on the others fill their queues and are paused, then resumed.
#[test]
fn kafka_reads_a_window_longer_than_its_read_ahead_whole_and_in_capture_order() {
    const CONNECTIONS: u64 = 6;
    const BURST: u64 = 3_000;
    let broker = Tansu::start().expect("tansu");
    let mut config = KafkaConfig::new(&broker.bootstrap(), "long-window");
    config.catalog_topic = "long-window-catalog".into();
    let mut store = KafkaStore::open(config).expect("kafka store");
    store.begin("long", "t").unwrap();
    let at = |id: u64| {
        let mut m = message(id, 20);
        m.conn_id = (id - 1) / BURST;
        m.first_ts = Timestamp(id);
        m
    };
    let total = CONNECTIONS * BURST;
    for id in 1..=total {
        store.append(&at(id), &tags(&["long"])).unwrap();
    }
    let rec = store.end("long", RecordingSummary::default()).unwrap();
    assert_eq!(rec.messages, total);
    let read = read_all(&mut store, "long");
    assert_eq!(ids(&read), (1..=total).collect::<Vec<_>>());
    for (id, bytes) in read.iter().step_by(997) {
        assert_eq!(*bytes, at(*id).bytes, "message {id}");
    }
}

#[test]
fn two_embedded_store_handles_on_one_directory_work_side_by_side() {
    // A recorder and a lister (or two recorders) share a data directory.
    let dir = tempfile::tempdir().unwrap();
    let mut a = EmbeddedStore::open(dir.path()).unwrap();
    let mut b = EmbeddedStore::open(dir.path()).unwrap();
    a.begin("a", "t").unwrap();
    b.begin("b", "t").unwrap();
    a.append(&message(1, 1), &tags(&["a"])).unwrap();
    b.append(&message(2, 1), &tags(&["b"])).unwrap();
    a.flush().unwrap();
    b.flush().unwrap();
    assert_eq!(b.get("a").unwrap().state, RecordingState::Recording);
    a.end("a", RecordingSummary::default()).unwrap();
    b.end("b", RecordingSummary::default()).unwrap();
    assert_eq!(ids(&read_all(&mut b, "a")), vec![1]);
    assert_eq!(ids(&read_all(&mut a, "b")), vec![2]);
}
