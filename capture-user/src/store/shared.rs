//! Recordings several nodes make under one name (Kafka): each node's part is a catalog entry
//! of its own (`name#node`), and the recording is their merge.

use std::collections::BTreeMap;

use super::{Recording, RecordingState};

/// Catalog key of one node's part of a shared recording (names never contain '#').
pub fn part_key(name: &str, node: &str) -> String {
    format!("{name}#{node}")
}

/// The recording name a catalog key belongs to, and whether it is a node's part.
pub fn split_part_key(key: &str) -> (&str, bool) {
    match key.split_once('#') {
        Some((name, _)) => (name, true),
        None => (key, false),
    }
}

/// One view of a recording made of several nodes' parts: its window spans all of them
/// (earliest start, latest end per partition), it is recording while any part is, and its
/// counts add up. Messages carry the recording's name, so the wider window stays exact.
pub fn merge_parts(name: &str, parts: &[Recording]) -> Option<Recording> {
    let first = parts.first()?;
    let mut merged = first.clone();
    merged.name = name.to_string();
    merged.owner = None;
    merged.start = BTreeMap::new();
    merged.drops = BTreeMap::new();
    merged.interfaces = BTreeMap::new();
    merged.messages = 0;
    merged.bytes = 0;
    let mut end: BTreeMap<i32, i64> = BTreeMap::new();
    let mut all_ended = true;
    let mut sources = Vec::new();
    for p in parts {
        for (&partition, &offset) in &p.start {
            let e = merged.start.entry(partition).or_insert(offset);
            *e = (*e).min(offset);
        }
        match &p.end {
            Some(p_end) => {
                for (&partition, &offset) in p_end {
                    let e = end.entry(partition).or_insert(offset);
                    *e = (*e).max(offset);
                }
            }
            None => all_ended = false,
        }
        merged.started_at_ns = merged.started_at_ns.min(p.started_at_ns);
        merged.stopped_at_ns = match (merged.stopped_at_ns, p.stopped_at_ns) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        merged.messages += p.messages;
        merged.bytes += p.bytes;
        for (k, v) in &p.drops {
            *merged.drops.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &p.interfaces {
            *merged.interfaces.entry(k.clone()).or_default() += v;
        }
        sources.push(p.source.clone());
    }
    merged.end = all_ended.then_some(end);
    merged.state = if parts.iter().any(|p| p.state == RecordingState::Recording) {
        RecordingState::Recording
    } else if parts.iter().any(|p| p.state == RecordingState::Failed) {
        RecordingState::Failed
    } else if parts.iter().any(|p| p.state == RecordingState::Interrupted) {
        RecordingState::Interrupted
    } else {
        RecordingState::Complete
    };
    merged.reason = parts.iter().find_map(|p| p.reason.clone());
    merged.source = format!("shared by {} nodes: {}", parts.len(), sources.join("; "));
    Some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::validate_name;

    fn part(
        start: &[(i32, i64)],
        end: Option<&[(i32, i64)]>,
        state: RecordingState,
        messages: u64,
    ) -> Recording {
        let mut r = Recording::started(
            "shared",
            "kafka",
            Some("t".into()),
            start.iter().copied().collect(),
            "node: live",
        );
        r.end = end.map(|e| e.iter().copied().collect());
        r.state = state;
        r.messages = messages;
        r.drops.insert("gaps".into(), 1);
        r
    }

    #[test]
    fn shared_parts_merge_into_one_window_spanning_every_node() {
        let a = part(
            &[(0, 10), (1, 5)],
            Some(&[(0, 20), (1, 9)]),
            RecordingState::Complete,
            4,
        );
        let b = part(
            &[(0, 12), (1, 3)],
            Some(&[(0, 30), (1, 7)]),
            RecordingState::Complete,
            6,
        );
        let m = merge_parts("shared", &[a.clone(), b.clone()]).unwrap();
        assert_eq!(m.start, BTreeMap::from([(0, 10), (1, 3)]));
        assert_eq!(m.end, Some(BTreeMap::from([(0, 30), (1, 9)])));
        assert_eq!(
            (m.state, m.messages, m.drops["gaps"]),
            (RecordingState::Complete, 10, 2)
        );
        assert!(m.owner.is_none());
        assert!(m.source.starts_with("shared by 2 nodes"));

        let running = part(&[(0, 15)], None, RecordingState::Recording, 0);
        let m = merge_parts("shared", &[a.clone(), running]).unwrap();
        assert_eq!((m.state, m.end), (RecordingState::Recording, None));
        let dead = part(&[(0, 15)], Some(&[(0, 16)]), RecordingState::Interrupted, 1);
        assert_eq!(
            merge_parts("shared", &[a, dead]).unwrap().state,
            RecordingState::Interrupted
        );
        assert!(merge_parts("shared", &[]).is_none());
    }

    #[test]
    fn part_keys_never_collide_with_names() {
        assert_eq!(split_part_key(&part_key("peak", "node-1")), ("peak", true));
        assert_eq!(split_part_key("peak"), ("peak", false));
        assert!(validate_name("peak#node").is_err());
    }
}
