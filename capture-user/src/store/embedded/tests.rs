//! The log through the store, in one process on real files: segment roll and offsets across
//! segments, skipping other recordings' batches without reading them, a torn tail cut and
//! counted, corruption before the tail refused, a window start found through the index,
//! retention and the v1 format refused.

use super::*;
use crate::message::MessageKind;
use bytes::Bytes;

fn message(id: u64, body: usize) -> HttpMessage {
    let mut bytes = format!("POST /m/{id} HTTP/1.1\r\nContent-Length: {body}\r\n\r\n").into_bytes();
    // Pseudo-random (splitmix64), so LZ4 cannot shrink it much and segments really fill.
    bytes.extend((0..body as u64).map(|i| {
        let mut z = (id << 32 | i).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u8
    }));
    HttpMessage {
        id,
        conn_id: id % 7,
        kind: MessageKind::Request {
            method: "POST".into(),
            uri: format!("/m/{id}").into(),
        },
        version: crate::message::HttpVersion::Http11,
        request_id: None,
        first_ts: Timestamp(1_000 + id),
        last_ts: Timestamp(2_000 + id),
        src: "10.0.0.1:40000".parse().unwrap(),
        dst: "10.0.0.2:80".parse().unwrap(),
        bytes: Bytes::from(bytes),
        body_len: body as u64,
        complete: true,
    }
}

fn small(dir: &Path) -> EmbeddedStore {
    let config = EmbeddedConfig {
        segment_bytes: 16 << 10,
        batch_bytes: 2 << 10,
        ..EmbeddedConfig::default()
    };
    EmbeddedStore::open_with(dir, config).unwrap()
}

fn tags(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

fn ids(store: &mut EmbeddedStore, name: &str) -> Vec<u64> {
    let mut out = Vec::new();
    store
        .read(name, &mut |m| {
            assert_eq!(
                m.bytes,
                message(m.meta.id, 300).bytes,
                "message {}",
                m.meta.id
            );
            out.push(m.meta.id);
            true
        })
        .unwrap();
    out
}

/// Records `ids` as `name` (300-byte bodies), ended.
fn record(store: &mut EmbeddedStore, name: &str, ids: std::ops::RangeInclusive<u64>) {
    store.begin(name, "test").unwrap();
    for id in ids {
        store.append(&message(id, 300), &tags(name)).unwrap();
    }
    store.end(name, RecordingSummary::default()).unwrap();
}

/// (base, position, frame) of every batch, in order.
fn batches(log_dir: &Path) -> Vec<(u64, u64, batch::Frame)> {
    let mut out = Vec::new();
    window::scan(log_dir, 0, None, &mut |seg, pos, frame| {
        out.push((seg.base, pos, frame.clone()));
        Ok(true)
    })
    .unwrap();
    out
}

#[test]
fn segments_roll_and_offsets_run_on_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = small(dir.path());
    record(&mut store, "a", 1..=200);
    let bases = segment::list(&dir.path().join("log")).unwrap();
    assert!(bases.len() >= 4, "{bases:?}");
    assert_eq!(bases[0], 1);
    let all = batches(&dir.path().join("log"));
    let mut next = 1;
    for (base, pos, frame) in &all {
        assert_eq!(frame.head.base_offset, next);
        if *pos == 0 {
            assert_eq!(*base, next, "a segment is named by its first offset");
        }
        next = frame.head.end_offset();
    }
    assert_eq!(next, 201);
    let rec = store.get("a").unwrap();
    assert_eq!((rec.start[&0], rec.end.clone().unwrap()[&0]), (1, 201));
    assert_eq!(rec.messages, 200);
    assert_eq!(ids(&mut store, "a"), (1..=200).collect::<Vec<_>>());
    // A second handle sees the same, and appends after it.
    let mut other = small(dir.path());
    record(&mut other, "b", 201..=230);
    assert_eq!(other.get("b").unwrap().start[&0], 201);
    assert_eq!(ids(&mut store, "b"), (201..=230).collect::<Vec<_>>());
}

#[test]
fn reading_skips_other_recordings_batches_without_reading_their_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = small(dir.path());
    store.begin("mine", "t").unwrap();
    store.begin("theirs", "t").unwrap();
    for id in 1..=60 {
        let name = if (id / 10) % 2 == 0 { "mine" } else { "theirs" };
        store.append(&message(id, 300), &tags(name)).unwrap();
    }
    store.end("mine", RecordingSummary::default()).unwrap();
    store.end("theirs", RecordingSummary::default()).unwrap();
    // Damage the payload of every batch of "theirs" that is not the log's last.
    let log_dir = dir.path().join("log");
    let all = batches(&log_dir);
    let last = all.len() - 1;
    for (i, (base, pos, frame)) in all.iter().enumerate() {
        if i != last && frame.tags.contains("theirs") {
            let path = segment::seg_path(&log_dir, *base);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = (*pos + frame.payload_at() + 5) as usize;
            bytes[at] ^= 0xff;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let mine: Vec<u64> = (1..=60).filter(|id| (id / 10) % 2 == 0).collect();
    assert_eq!(ids(&mut store, "mine"), mine);
    let err = store.read("theirs", &mut |_| true).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { position, message }
            if position.contains(".seg byte") && message.contains("payload CRC")),
        "{err}"
    );
}

#[test]
fn a_torn_tail_is_cut_counted_and_everything_before_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let mut store = small(dir.path());
    record(&mut store, "before", 1..=50);
    record(&mut store, "torn", 51..=80);
    drop(store);
    let (base, pos, frame) = batches(&log_dir).pop().unwrap();
    assert!(frame.tags.contains("torn"));
    let lost = u64::from(frame.head.count);
    let path = segment::seg_path(&log_dir, base);
    let cut = pos + frame.head.batch_len() / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut)
        .unwrap();
    // Readers treat it as not written.
    let mut reader = small(dir.path());
    let kept: Vec<u64> = (51..=80 - lost).collect();
    assert_eq!(ids(&mut reader, "torn"), kept);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        cut,
        "readers never cut"
    );
    // A writer cuts it and counts its messages as dropped by the recording they belonged to.
    let mut writer = small(dir.path());
    record(&mut writer, "after", 81..=90);
    let after_cut = batches(&log_dir);
    assert!(
        after_cut
            .iter()
            .all(|(_, _, f)| f.head.end_offset() <= frame.head.base_offset
                || f.tags.contains("after")),
        "the torn batch is gone"
    );
    let torn = writer.get("torn").unwrap();
    assert_eq!(torn.drops.get(TORN_TAIL_DROP), Some(&lost));
    assert_eq!(ids(&mut writer, "before"), (1..=50).collect::<Vec<_>>());
    assert_eq!(ids(&mut writer, "torn"), kept);
    assert_eq!(ids(&mut writer, "after"), (81..=90).collect::<Vec<_>>());
    // The cut batch's offsets were never readable; the next batch reuses them.
    assert_eq!(
        writer.get("after").unwrap().start[&0] as u64,
        frame.head.base_offset
    );
}

#[test]
fn zeros_at_the_tail_are_a_torn_write_but_garbage_before_it_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let mut store = small(dir.path());
    record(&mut store, "r", 1..=20);
    drop(store);
    let (base, _, _) = batches(&log_dir).pop().unwrap();
    let path = segment::seg_path(&log_dir, base);
    let mut bytes = std::fs::read(&path).unwrap();
    let whole = bytes.len();
    bytes.extend(std::iter::repeat_n(0u8, 5000));
    std::fs::write(&path, &bytes).unwrap();
    let mut writer = small(dir.path());
    writer.begin("next", "t").unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
    assert_eq!(ids(&mut writer, "r"), (1..=20).collect::<Vec<_>>());
    // Garbage in the first segment (not the tail): a corrupt error naming file and byte.
    let first = segment::seg_path(&log_dir, 1);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[3] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let err = writer.read("r", &mut |_| true).unwrap_err().to_string();
    assert!(err.contains("00000000000000000001.seg byte 0"), "{err}");
}

#[test]
fn a_window_starting_deep_in_a_segment_is_found_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        batch_bytes: 1 << 10,
        ..EmbeddedConfig::default()
    };
    let mut store = EmbeddedStore::open_with(dir.path(), config.clone()).unwrap();
    record(&mut store, "early", 1..=2000);
    record(&mut store, "late", 2001..=2010);
    let log_dir = dir.path().join("log");
    let seg = segment::SegmentReader::open(&log_dir, 1, true).unwrap();
    let (position, offset) = seg.seek(&log_dir, 2001);
    assert!(
        position > seg.len / 2 && offset <= 2001,
        "{position} {offset}"
    );
    assert_eq!(ids(&mut store, "late"), (2001..=2010).collect::<Vec<_>>());
    // A damaged index is only a hint: reads still find the start.
    std::fs::write(segment::idx_path(&log_dir, 1), [7u8; 64]).unwrap();
    assert_eq!(ids(&mut store, "late"), (2001..=2010).collect::<Vec<_>>());
}

#[test]
fn retention_deletes_the_oldest_finished_recordings_and_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = EmbeddedConfig {
        segment_bytes: 16 << 10,
        batch_bytes: 2 << 10,
        retention_bytes: Some(64 << 10),
        ..EmbeddedConfig::default()
    };
    let mut store = EmbeddedStore::open_with(dir.path(), config).unwrap();
    for (i, name) in ["r1", "r2", "r3", "r4", "r5"].iter().enumerate() {
        let first = i as u64 * 100 + 1;
        record(&mut store, name, first..=first + 99);
    }
    let names: Vec<String> = store.list().unwrap().into_iter().map(|r| r.name).collect();
    assert!(!names.contains(&"r1".to_string()), "{names:?}");
    assert!(names.contains(&"r5".to_string()), "{names:?}");
    assert!(store.log_bytes().unwrap() <= (64 + 16 + 4) << 10);
    for name in names {
        let rec = store.get(&name).unwrap();
        assert_eq!(ids(&mut store, &name).len() as u64, rec.messages);
    }
    // A running recording alone over the cap is reported, never deleted.
    store.begin("huge", "t").unwrap();
    let mut over = None;
    for id in 1..=2000 {
        if let Err(e) = store.append(&message(id, 300), &tags("huge")) {
            over = Some(e);
            break;
        }
    }
    assert!(
        matches!(over, Some(StoreError::RetentionFull { .. })),
        "{over:?}"
    );
    let committed = store.committed("huge").unwrap();
    let limit = Ending::Limit("reached the retention cap".to_string());
    let rec = store
        .end(
            "huge",
            RecordingSummary {
                ending: limit,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (rec.state, rec.messages),
        (RecordingState::Complete, committed.messages)
    );
    assert_eq!(ids(&mut store, "huge").len() as u64, committed.messages);
}

#[test]
fn a_v1_data_directory_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("capture.sqlite"), b"SQLite format 3\0").unwrap();
    let err = EmbeddedStore::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("v1 store format") && err.contains("--data-dir"),
        "{err}"
    );
}

#[test]
fn delete_reclaims_the_segments_no_other_window_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("log");
    let mut store = small(dir.path());
    record(&mut store, "old", 1..=200);
    record(&mut store, "new", 201..=400);
    let before = segment::list(&log_dir).unwrap();
    let bytes_before = store.log_bytes().unwrap();
    store.delete("old").unwrap();
    let after = segment::list(&log_dir).unwrap();
    assert!(after.len() < before.len() - 2, "{before:?} -> {after:?}");
    assert!(store.log_bytes().unwrap() < bytes_before / 2 + (16 << 10));
    // The segment where "old" ends and "new" begins stays, and "new" reads back whole.
    let new_start = store.get("new").unwrap().start[&0] as u64;
    assert!(after[0] <= new_start);
    assert_eq!(ids(&mut store, "new"), (201..=400).collect::<Vec<_>>());
    assert!(matches!(store.get("old"), Err(StoreError::NotFound(_))));
}
