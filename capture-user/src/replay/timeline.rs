//! What the report's charts plot: requests sent, answered and failed, and latency percentiles,
//! per interval of the replay. Sans-IO: the engine feeds events with their time since the
//! replay's start; the page reads `points()`.
//!
//! Memory is bounded whatever the replay's length: at most `MAX_BUCKETS` buckets, 1 s wide at
//! first; when the replay outgrows them, neighbours merge pairwise and the width doubles, so a
//! 10-hour replay still has at most 300 points (about 2 min each).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Most buckets kept: enough points for a chart 1280 px wide, few enough to stay small.
pub const MAX_BUCKETS: usize = 300;

/// Width of a bucket before any merge.
const FIRST_WIDTH: Duration = Duration::from_secs(1);

/// Largest latency tracked (1 hour, in µs); longer ones are clamped to it.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Two significant digits: a chart cannot show more, and each histogram stays at 13 KiB
/// (3328 `u32` counts), so the whole timeline stays under 4 MiB.
const LATENCY_SIGFIG: u8 = 2;

/// One interval's counts.
#[derive(Clone, Debug, Default)]
struct Bucket {
    sent: u64,
    answered: u64,
    failed: u64,
    /// Created on the first answer, so idle intervals cost nothing.
    latency: Option<Histogram<u32>>,
}

impl Bucket {
    /// Fold `other` (the next interval) into this one.
    fn absorb(&mut self, other: Bucket) {
        self.sent += other.sent;
        self.answered += other.answered;
        self.failed += other.failed;
        match (&mut self.latency, other.latency) {
            (Some(mine), Some(theirs)) => {
                // Same bounds on both sides, so the values always fit; counts saturate.
                let _ = mine.add(&theirs);
            }
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    fn record_latency(&mut self, latency: Duration) {
        if self.latency.is_none() {
            // Constant, valid bounds: this cannot fail; if it did, the bucket just has no
            // percentiles.
            self.latency = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG).ok();
        }
        if let Some(h) = &mut self.latency {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            h.saturating_record(us.clamp(1, LATENCY_MAX_US));
        }
    }

    /// A percentile in ms, None when nothing was answered in the interval.
    fn percentile_ms(&self, quantile: f64) -> Option<f64> {
        let h = self.latency.as_ref().filter(|h| !h.is_empty())?;
        Some(h.value_at_quantile(quantile) as f64 / 1000.0)
    }
}

/// Sent, answered and failed requests and latency per interval of a replay, in bounded memory.
#[derive(Clone, Debug)]
pub struct Timeline {
    /// Bucket `i` covers `[i * width, (i + 1) * width)` since the start.
    buckets: Vec<Bucket>,
    width: Duration,
    /// The latest time seen (an event or `advance`): where the last bucket's known part ends.
    latest: Duration,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

/// One interval of the replay as the charts plot it.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TimelinePoint {
    /// Where the interval starts, in seconds since the replay's start.
    pub start_s: f64,
    /// How long it is. The last interval is cut to the part the timeline saw (see
    /// `Timeline::points`), so `rate * width_s` is always the interval's count.
    pub width_s: f64,
    /// Requests written per second in the interval.
    pub sent_per_s: f64,
    /// Final responses per second, counted when they arrived.
    pub answered_per_s: f64,
    /// Requests per second that got no response, counted when they failed.
    pub failed_per_s: f64,
    /// Latency of the requests answered in the interval; None when none was.
    pub p50_ms: Option<f64>,
    /// As `p50_ms`, at 90%.
    pub p90_ms: Option<f64>,
    /// As `p50_ms`, at 99%: the line that shows a tail getting worse.
    pub p99_ms: Option<f64>,
}

impl Timeline {
    /// An empty timeline with 1 s buckets.
    pub fn new() -> Self {
        Self {
            buckets: Vec::new(),
            width: FIRST_WIDTH,
            latest: Duration::ZERO,
        }
    }

    /// A request was written, `at` after the replay's start.
    pub fn sent(&mut self, at: Duration) {
        self.bucket(at).sent += 1;
    }

    /// A request's final response arrived `at` after the start, `latency` after it was sent.
    pub fn answered(&mut self, at: Duration, latency: Duration) {
        let bucket = self.bucket(at);
        bucket.answered += 1;
        bucket.record_latency(latency);
    }

    /// A request failed (no response), `at` after the start.
    pub fn failed(&mut self, at: Duration) {
        self.bucket(at).failed += 1;
    }

    /// The replay reached `now` (a clock tick or its end): idle time up to there shows as
    /// zeros and the last interval's rates count the time up to `now`, not only up to the
    /// last event.
    pub fn advance(&mut self, now: Duration) {
        if now >= self.latest {
            let _ = self.bucket(now);
        }
    }

    /// How wide each bucket is now (1 s, doubling as the replay gets longer).
    pub fn width(&self) -> Duration {
        self.width
    }

    /// The intervals in time order, with rates per second.
    ///
    /// The last interval is usually partial: its rates are per the part up to the latest
    /// time seen (the latest event, or `advance`), but never per less than 1 s, so a lone
    /// request just after an interval opens does not show as a spike. Its `width_s` is that
    /// same part.
    pub fn points(&self) -> Vec<TimelinePoint> {
        let width = self.width.as_secs_f64();
        let last = self.buckets.len().saturating_sub(1);
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let start_s = i as f64 * width;
                let span = if i == last {
                    let seen = self.latest.as_secs_f64() - start_s;
                    seen.max(FIRST_WIDTH.as_secs_f64()).min(width)
                } else {
                    width
                };
                TimelinePoint {
                    start_s,
                    width_s: span,
                    sent_per_s: b.sent as f64 / span,
                    answered_per_s: b.answered as f64 / span,
                    failed_per_s: b.failed as f64 / span,
                    p50_ms: b.percentile_ms(0.50),
                    p90_ms: b.percentile_ms(0.90),
                    p99_ms: b.percentile_ms(0.99),
                }
            })
            .collect()
    }

    /// The bucket `at` falls in, merging buckets first if `at` is beyond the last one.
    fn bucket(&mut self, at: Duration) -> &mut Bucket {
        self.latest = self.latest.max(at);
        while at.as_nanos() / self.width.as_nanos() >= MAX_BUCKETS as u128 {
            self.merge_pairs();
        }
        // Below MAX_BUCKETS by the loop above.
        let index = (at.as_nanos() / self.width.as_nanos()) as usize;
        if self.buckets.len() <= index {
            self.buckets.resize_with(index + 1, Bucket::default);
        }
        &mut self.buckets[index]
    }

    /// Halve the number of buckets: each pair becomes one, twice as wide.
    fn merge_pairs(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        let mut merged = Vec::with_capacity(old.len().div_ceil(2));
        let mut pairs = old.into_iter();
        while let Some(mut first) = pairs.next() {
            if let Some(second) = pairs.next() {
                first.absorb(second);
            }
            merged.push(first);
        }
        self.buckets = merged;
        self.width = self.width.saturating_mul(2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn counts_land_in_one_second_buckets() {
        let mut t = Timeline::new();
        t.sent(secs(0.1));
        t.sent(secs(0.9));
        t.answered(secs(0.95), Duration::from_millis(20));
        t.sent(secs(2.5));
        t.failed(secs(2.6));
        let p = t.points();
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].start_s, p[0].width_s), (0.0, 1.0));
        assert_eq!((p[0].sent_per_s, p[0].answered_per_s), (2.0, 1.0));
        assert_eq!(p[1].sent_per_s, 0.0);
        assert_eq!(p[1].p50_ms, None);
        assert_eq!((p[2].sent_per_s, p[2].failed_per_s), (1.0, 1.0));
        let p50 = p[0].p50_ms.unwrap_or_default();
        assert!((p50 - 20.0).abs() < 0.2, "{p50}");
    }

    #[test]
    fn a_long_replay_merges_pairwise_and_stays_bounded() {
        let mut t = Timeline::new();
        // One request a second for 10 hours.
        for s in 0..36_000u64 {
            t.sent(Duration::from_secs(s));
            t.answered(Duration::from_secs(s), Duration::from_millis(s % 100 + 1));
        }
        let p = t.points();
        assert!(p.len() <= MAX_BUCKETS, "{}", p.len());
        assert_eq!(t.width(), Duration::from_secs(128));
        // Every bucket but the last is full: one request per second.
        for point in &p[..p.len() - 1] {
            assert_eq!(point.width_s, 128.0);
            assert!((point.sent_per_s - 1.0).abs() < 1e-9, "{point:?}");
            assert!(point.p99_ms.is_some());
        }
        let total: f64 = p.iter().map(|p| p.sent_per_s * p.width_s).sum();
        assert!((total - 36_000.0).abs() < 1e-6, "{total}");
    }

    #[test]
    fn merging_keeps_counts_and_latency() {
        let mut t = Timeline::new();
        t.answered(secs(0.5), Duration::from_millis(10));
        t.answered(secs(1.5), Duration::from_millis(30));
        t.sent(secs(299.5));
        assert_eq!(t.points().len(), 300);
        t.sent(secs(300.0)); // the 301st second: merge to 2 s buckets
        let p = t.points();
        assert_eq!(t.width(), Duration::from_secs(2));
        assert_eq!(p.len(), 151);
        assert_eq!(p[0].answered_per_s, 1.0); // 2 answers over 2 s
        assert!(p[0].p50_ms.is_some_and(|v| (v - 10.0).abs() < 0.1));
        assert!(p[0].p99_ms.is_some_and(|v| (v - 30.0).abs() < 0.3));
    }

    #[test]
    fn the_last_bucket_is_per_its_seen_part() {
        let mut t = Timeline::new();
        t.sent(Duration::from_secs(500)); // width 2 s after one merge
        t.sent(Duration::from_secs(1));
        let p = t.points();
        assert_eq!(t.width(), Duration::from_secs(2));
        let last = &p[p.len() - 1];
        assert_eq!(
            (last.start_s, last.width_s, last.sent_per_s),
            (500.0, 1.0, 1.0)
        );
        t.advance(Duration::from_millis(501_500));
        let last = t.points().pop();
        assert_eq!(last.map(|p| p.width_s), Some(1.5));
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let mut t = Timeline::new();
        assert!(t.points().is_empty());
        t.answered(Duration::ZERO, Duration::MAX);
        t.sent(Duration::MAX);
        let p = t.points();
        assert!(p.len() <= MAX_BUCKETS);
        assert!(
            p.iter()
                .all(|p| p.sent_per_s.is_finite() && p.width_s > 0.0)
        );
        assert_eq!(p[0].p99_ms.map(|v| v >= 3_500_000.0), Some(true));
    }
}
