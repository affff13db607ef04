//! What to delete to keep the log under a size cap: a pure choice, applied by the store.
//!
//! Space is reclaimed at segment granularity: a segment can go once no remaining recording's
//! window overlaps its offsets (the last segment, being appended to, always stays). To get
//! under the cap the oldest finished recordings are deleted first, one at a time, until the
//! segments they alone held bring the log under it; running recordings are never deleted, and
//! when they alone keep the log over the cap the plan says so (`over_cap`).

/// A recording's window as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub name: String,
    pub start: u64,
    /// Exclusive end; None while running.
    pub end: Option<u64>,
    pub running: bool,
    pub started_at_ns: u64,
}

/// A segment: its base offset and bytes on disk (with its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSize {
    pub base: u64,
    pub bytes: u64,
}

/// What to delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Finished recordings to delete from the catalog (oldest first).
    pub recordings: Vec<String>,
    /// Segments no remaining window overlaps.
    pub segments: Vec<u64>,
    /// Bytes the log keeps after the plan.
    pub kept_bytes: u64,
    /// Still over the cap with only running recordings left to delete.
    pub over_cap: bool,
}

/// Segments (never the last) that no span overlaps.
pub fn unreferenced(segments: &[SegmentSize], spans: &[&Span]) -> Vec<u64> {
    let Some((_, older)) = segments.split_last() else {
        return Vec::new();
    };
    older
        .iter()
        .zip(&segments[1..])
        .filter(|(seg, next)| {
            !spans.iter().any(|s| {
                let end = s.end.unwrap_or(u64::MAX);
                s.start < end && s.start < next.base && seg.base < end
            })
        })
        .map(|(seg, _)| seg.base)
        .collect()
}

/// The plan for `cap` bytes (None: only drop segments nobody references, as `delete` does).
pub fn plan(segments: &[SegmentSize], spans: &[Span], cap: Option<u64>) -> Plan {
    let total: u64 = segments.iter().map(|s| s.bytes).sum();
    let mut keep: Vec<&Span> = spans.iter().collect();
    keep.sort_by_key(|s| (s.started_at_ns, s.start));
    let mut recordings = Vec::new();
    loop {
        let free = unreferenced(segments, &keep);
        let freed: u64 = segments
            .iter()
            .filter(|s| free.contains(&s.base))
            .map(|s| s.bytes)
            .sum();
        let kept_bytes = total - freed;
        let Some(cap) = cap.filter(|&c| kept_bytes > c) else {
            return Plan {
                recordings,
                segments: free,
                kept_bytes,
                over_cap: false,
            };
        };
        match keep.iter().position(|s| !s.running) {
            Some(i) => recordings.push(keep.remove(i).name.clone()),
            None => {
                return Plan {
                    recordings,
                    segments: free,
                    kept_bytes,
                    over_cap: kept_bytes > cap,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(bases: &[u64]) -> Vec<SegmentSize> {
        bases
            .iter()
            .map(|&base| SegmentSize { base, bytes: 100 })
            .collect()
    }

    fn span(name: &str, start: u64, end: Option<u64>, t: u64) -> Span {
        Span {
            name: name.into(),
            start,
            end,
            running: end.is_none(),
            started_at_ns: t,
        }
    }

    #[test]
    fn segments_no_window_overlaps_go_but_never_the_last() {
        // Segments [1,10) [10,20) [20,30) [30,..)
        let s = segs(&[1, 10, 20, 30]);
        let a = span("a", 12, Some(15), 1);
        assert_eq!(unreferenced(&s, &[&a]), vec![1, 20]);
        let b = span("b", 5, Some(10), 2);
        assert_eq!(unreferenced(&s, &[&b]), vec![10, 20]);
        let empty = span("e", 25, Some(25), 3);
        assert_eq!(unreferenced(&s, &[&empty]), vec![1, 10, 20]);
        let running = span("r", 25, None, 4);
        assert_eq!(unreferenced(&s, &[&running]), vec![1, 10]);
        assert!(unreferenced(&segs(&[1]), &[]).is_empty());
    }

    #[test]
    fn the_oldest_finished_recordings_go_first_until_under_the_cap() {
        let s = segs(&[1, 10, 20, 30, 40]);
        let spans = vec![
            span("newer", 20, Some(30), 20),
            span("oldest", 1, Some(10), 5),
            span("old", 10, Some(20), 10),
            span("running", 40, None, 30),
        ];
        // Segment 30 holds nobody's messages; deleting "oldest" frees segment 1 as well.
        let p = plan(&s, &spans, Some(300));
        assert_eq!(p.recordings, vec!["oldest"]);
        assert_eq!(p.segments, vec![1, 30]);
        assert_eq!((p.kept_bytes, p.over_cap), (300, false));
        let p = plan(&s, &spans, Some(200));
        assert_eq!(p.recordings, vec!["oldest", "old"]);
        assert_eq!((p.segments, p.kept_bytes), (vec![1, 10, 30], 200));
        let untouched = plan(&s, &spans, Some(500));
        assert_eq!(
            (untouched.recordings.len(), untouched.segments),
            (0, vec![30])
        );
    }

    #[test]
    fn running_recordings_are_never_deleted_and_overflow_is_reported() {
        let s = segs(&[1, 10, 20]);
        let spans = vec![span("done", 10, Some(20), 1), span("live", 1, None, 2)];
        let p = plan(&s, &spans, Some(100));
        assert_eq!(p.recordings, vec!["done"]);
        assert!(p.segments.is_empty(), "live spans every segment");
        assert!(p.over_cap);
        assert_eq!(p.kept_bytes, 300);
    }

    #[test]
    fn without_a_cap_only_unreferenced_segments_go() {
        let s = segs(&[1, 10, 20]);
        let p = plan(&s, &[span("a", 10, Some(12), 1)], None);
        assert_eq!((p.recordings.len(), p.segments.clone()), (0, vec![1]));
    }
}
