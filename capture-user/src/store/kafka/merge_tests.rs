use proptest::prelude::*;

use super::*;
use crate::message::{HttpMessage, MessageKind};
use crate::packet::Timestamp;

fn stored(id: u64, ts: u64) -> StoredMessage {
    let addr = "10.0.0.1:80".parse().expect("address");
    let m = HttpMessage {
        id,
        conn_id: 1,
        kind: MessageKind::Response { status: 200 },
        version: crate::message::HttpVersion::Http11,
        request_id: None,
        first_ts: Timestamp(ts),
        last_ts: Timestamp(ts),
        src: addr,
        dst: addr,
        bytes: bytes::Bytes::from(vec![b'x'; (id % 7) as usize]),
        body_len: 0,
        complete: true,
    };
    StoredMessage {
        meta: crate::store::meta_for(&m, "n", 1, &[]),
        bytes: m.bytes,
    }
}

/// The merge of whole per-partition lists that reading did before it streamed: what the
/// streaming merge must equal.
fn merge_whole(per_partition: BTreeMap<i32, Vec<StoredMessage>>) -> Vec<u64> {
    let mut cursors: Vec<_> = per_partition
        .into_values()
        .map(|v| v.into_iter().peekable())
        .collect();
    let mut out = Vec::new();
    loop {
        let next = cursors
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| c.peek().map(|m| (m.meta.first_ts, i)))
            .min();
        let Some((_, i)) = next else {
            return out;
        };
        out.extend(cursors[i].next().map(|m| m.meta.id));
    }
}

fn drain(merge: &mut WindowMerge) -> Vec<u64> {
    std::iter::from_fn(|| merge.pop())
        .map(|m| m.meta.id)
        .collect()
}

#[test]
fn partitions_merge_by_capture_time_keeping_each_partitions_order() {
    let mut merge = WindowMerge::new([(0, 0, 3), (1, 10, 13)]);
    for (p, offset, id, ts) in [(0, 0, 1, 10), (0, 1, 2, 30), (0, 2, 3, 31)] {
        assert!(merge.take(p, offset));
        merge.push(p, stored(id, ts));
    }
    // Partition 1 may still hold something earlier: nothing can be handed on yet.
    assert_eq!(drain(&mut merge), Vec::<u64>::new());
    for (p, offset, id, ts) in [(1, 10, 4, 20), (1, 11, 5, 30), (1, 12, 6, 5)] {
        assert!(merge.take(p, offset));
        merge.push(p, stored(id, ts));
    }
    // Message 6 carries an earlier time than 5 but stays after it: a partition's (a
    // connection's) order is never changed, only the partitions are interleaved.
    assert_eq!(drain(&mut merge), vec![1, 4, 2, 5, 6, 3]);
    assert!(merge.is_done());
}

#[test]
fn a_message_waits_only_for_partitions_that_may_still_bring_an_earlier_one() {
    let mut merge = WindowMerge::new([(0, 0, 2), (1, 0, 2), (2, 5, 5)]);
    assert_eq!(merge.starts().collect::<Vec<_>>(), vec![(0, 0), (1, 0)]);
    assert!(merge.take(0, 0));
    merge.push(0, stored(1, 50));
    assert!(merge.take(1, 0));
    merge.push(1, stored(2, 10));
    assert_eq!(drain(&mut merge), vec![2]);
    // A record that is not the recording's still moves its partition to the end.
    assert!(merge.take(1, 1));
    assert_eq!(drain(&mut merge), vec![1]);
    assert!(!merge.is_done());
    assert_eq!(merge.unfinished(), BTreeMap::from([(0, (1, 2))]));
}

#[test]
fn the_window_ends_at_its_last_offset_per_partition_and_takes_each_record_once() {
    let mut merge = WindowMerge::new([(0, 0, 3), (1, 0, 1)]);
    assert!(merge.take(0, 1));
    assert!(!merge.take(0, 1), "a record delivered twice is taken once");
    assert!(!merge.take(0, 0));
    assert!(merge.take(1, 0));
    assert!(!merge.take(1, 1));
    assert!(merge.take(0, 2));
    assert!(!merge.take(0, 3));
    assert!(!merge.take(7, 0), "not a partition of the window");
    assert!(merge.is_done());
}

#[test]
fn a_full_partition_pauses_and_resumes_half_drained_and_a_finished_one_pauses() {
    let mut merge = WindowMerge::with_caps([(0, 0, 10), (1, 0, 10)], 4, 1 << 20);
    for offset in 0..4 {
        assert!(merge.take(0, offset));
        merge.push(0, stored(offset as u64 + 1, 100));
    }
    assert_eq!(
        merge.flow(),
        Flow {
            pause: vec![0],
            resume: vec![]
        }
    );
    assert_eq!(merge.flow(), Flow::default(), "said once");
    assert!(merge.take(1, 0));
    merge.push(1, stored(10, 1));
    assert_eq!(drain(&mut merge), vec![10], "then 1 waits for partition 1");
    assert!(merge.take(1, 1));
    merge.push(1, stored(11, 200));
    assert_eq!(drain(&mut merge), vec![1, 2, 3, 4]);
    assert_eq!(
        merge.flow(),
        Flow {
            pause: vec![],
            resume: vec![0]
        }
    );
    // Partition 1 has taken all of its window but its queue drains on: it pauses too.
    for offset in 2..10 {
        assert!(merge.take(1, offset));
    }
    assert_eq!(merge.flow().pause, vec![1]);

    // A byte cap pauses too; a message larger than the cap is taken alone.
    let mut merge = WindowMerge::with_caps([(0, 0, 10)], 100, 4);
    assert!(merge.take(0, 0));
    merge.push(0, stored(5, 1));
    assert_eq!(merge.flow().pause, vec![0]);
}

/// What the consumer does, played from `choices`: each step hands one record of a partition
/// that is neither paused nor finished (some records are not the recording's and push
/// nothing), then hands on what can be, then pauses and resumes as told.
fn play(
    parts: &BTreeMap<i32, Vec<Option<(u64, u64)>>>,
    caps: (usize, usize),
    choices: &[usize],
    stop_after: Option<usize>,
) -> Result<Vec<u64>, String> {
    let windows = parts.iter().map(|(&p, r)| (p, 100, 100 + r.len() as i64));
    let mut merge = WindowMerge::with_caps(windows, caps.0, caps.1);
    let mut next: BTreeMap<i32, i64> = merge.starts().collect();
    let mut paused = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for step in 0.. {
        while let Some(m) = merge.pop() {
            out.push(m.meta.id);
            if stop_after.is_some_and(|n| out.len() >= n) {
                return Ok(out);
            }
        }
        if merge.is_done() {
            return Ok(out);
        }
        let flow = merge.flow();
        paused.extend(flow.pause);
        for p in &flow.resume {
            paused.remove(p);
        }
        let ready: Vec<i32> = parts
            .iter()
            .filter(|(p, r)| {
                !paused.contains(*p) && next.get(*p).is_some_and(|&n| n < 100 + r.len() as i64)
            })
            .map(|(&p, _)| p)
            .collect();
        if ready.is_empty() {
            return Err(format!(
                "stuck after {out:?}: every partition paused or done"
            ));
        }
        let p = ready[choices
            .get(step % choices.len().max(1))
            .copied()
            .unwrap_or(0)
            % ready.len()];
        let offset = next[&p];
        let record = parts[&p][(offset - 100) as usize];
        // Sometimes the consumer hands a record again (a fetch retried): taken once.
        if step % 7 == 3 && offset > 100 {
            assert!(!merge.take(p, offset - 1));
        }
        assert!(merge.take(p, offset));
        next.insert(p, offset + 1);
        if let Some((id, ts)) = record {
            merge.push(p, stored(id, ts));
        }
        let queued = merge.partitions[&p].queue.len();
        if queued > caps.0 {
            return Err(format!(
                "partition {p} queued {queued}, over its cap {}",
                caps.0
            ));
        }
    }
    unreachable!("the loop returns")
}

fn partitions() -> impl Strategy<Value = BTreeMap<i32, Vec<Option<(u64, u64)>>>> {
    proptest::collection::btree_map(
        0i32..6,
        proptest::collection::vec(proptest::option::weighted(0.85, 0u64..40), 0..30),
        1..5,
    )
    .prop_map(|parts| {
        let mut id = 0;
        parts
            .into_iter()
            .map(|(p, records)| {
                let records = records
                    .into_iter()
                    .map(|ts| {
                        ts.map(|ts| {
                            id += 1;
                            (id, ts)
                        })
                    })
                    .collect();
                (p, records)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_streaming_merge_equals_the_whole_window_merge_within_its_caps(
        parts in partitions(),
        max_messages in 1usize..5,
        max_bytes in 1usize..30,
        choices in proptest::collection::vec(0usize..8, 1..40),
        stop_after in proptest::option::of(1usize..10),
    ) {
        let whole = merge_whole(
            parts
                .iter()
                .map(|(&p, r)| (p, r.iter().flatten().map(|&(id, ts)| stored(id, ts)).collect()))
                .collect(),
        );
        let streamed = play(&parts, (max_messages, max_bytes), &choices, None);
        prop_assert_eq!(streamed, Ok(whole.clone()));
        // Stopping early hands on exactly the start of the same order.
        if let Some(n) = stop_after {
            let early = play(&parts, (max_messages, max_bytes), &choices, Some(n));
            let expected: Vec<u64> = whole.iter().copied().take(n).collect();
            prop_assert_eq!(early, Ok(expected));
        }
    }
}
