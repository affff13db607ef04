//! The replay summary: counts, copies, the source's and the sample's lines.
use super::*;

/// Totals with `planned` sends spread evenly over `copies` copies.
fn tally(planned: u64, copies: u32) -> Tally {
    let mut t = Tally::new(copies);
    for i in 0..planned {
        t.planned((i % u64::from(copies)) as u32);
    }
    t
}

#[test]
fn report_counts_statuses_failures_mismatches_and_percentiles() {
    let mut t = tally(6, 1);
    for (i, (status, recorded)) in [(200, Some(200)), (200, Some(404)), (500, None), (200, None)]
        .into_iter()
        .enumerate()
    {
        t.sent(0, Duration::ZERO, Duration::from_millis(i as u64));
        t.completed(
            0,
            Duration::ZERO,
            status,
            recorded,
            10,
            Duration::from_millis(10 * (i as u64 + 1)),
        );
    }
    t.sent(0, Duration::ZERO, Duration::ZERO);
    t.failed(0, Duration::ZERO, FailureKind::ResponseTimeout);
    let r = t.report(Duration::from_secs(2), Some("--exit-after 2s"));
    assert_eq!(
        (r.planned, r.sent, r.completed, r.failed, r.not_run),
        (6, 5, 4, 1, 1)
    );
    assert_eq!(r.statuses.get("200"), Some(&3));
    assert_eq!(r.statuses.get("500"), Some(&1));
    assert_eq!(r.failures.get("response_timeout"), Some(&1));
    assert_eq!(
        r.mismatches,
        vec![Mismatch {
            recorded: 404,
            replayed: 200,
            count: 1
        }]
    );
    assert_eq!(r.latency_ms.count, 4);
    assert!((r.latency_ms.p50 - 20.0).abs() < 0.05, "{:?}", r.latency_ms);
    assert!((r.latency_ms.max - 40.0).abs() < 0.05);
    assert_eq!(r.schedule_lag_ms.count, 5);
    assert!((r.requests_per_second - 2.0).abs() < 1e-9);
    assert!(r.has_failures());
    let text = r.to_text();
    assert!(text.contains("statuses: 200=3 500=1"), "{text}");
    assert!(text.contains("404->200: 1"), "{text}");
    assert!(text.contains("ended early: --exit-after 2s"), "{text}");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["failures"]["response_timeout"], 1);
}

#[test]
fn connect_failures_are_not_sends_and_in_flight_is_what_is_left() {
    let mut t = tally(3, 1);
    t.not_sent(
        0,
        Duration::ZERO,
        Duration::ZERO,
        FailureKind::ConnectRefused,
    );
    t.sent(0, Duration::ZERO, Duration::ZERO);
    t.sent(0, Duration::ZERO, Duration::ZERO);
    t.completed(0, Duration::ZERO, 200, None, 0, Duration::from_millis(1));
    assert_eq!(t.in_flight(), 1);
    let r = t.report(Duration::from_secs(1), None);
    assert_eq!((r.sent, r.failed, r.in_flight, r.not_run), (2, 1, 1, 0));
    assert_eq!(
        Tally::new(1).report(Duration::ZERO, None).latency_ms,
        Percentiles::default()
    );
}

#[test]
fn copies_are_counted_together_and_each_on_its_own() {
    let mut t = tally(6, 3);
    for copy in 0..3 {
        t.sent(copy, Duration::ZERO, Duration::ZERO);
        t.completed(
            copy,
            Duration::ZERO,
            200,
            Some(200),
            0,
            Duration::from_millis(1),
        );
    }
    t.sent(1, Duration::ZERO, Duration::ZERO);
    t.failed(1, Duration::ZERO, FailureKind::ResponseTimeout);
    t.not_sent(
        2,
        Duration::ZERO,
        Duration::ZERO,
        FailureKind::ConnectRefused,
    );
    let r = t.report(Duration::from_secs(1), None);
    assert_eq!((r.planned, r.sent, r.completed, r.failed), (6, 4, 3, 2));
    let counts = |c: &CopyCounts| (c.copy, c.planned, c.sent, c.completed, c.failed);
    assert_eq!(
        r.copies.iter().map(counts).collect::<Vec<_>>(),
        vec![(1, 2, 1, 1, 0), (2, 2, 2, 1, 1), (3, 2, 1, 1, 1)]
    );
    let text = r.to_text();
    assert!(
        text.contains("copies: 3, completed per copy: 1=1 2=1 3=1"),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["copies"][1]["failed"], 1);
    assert_eq!(json["sample"], serde_json::Value::Null);
    // Without --copies: one entry, and no copies line.
    let r = tally(2, 1).report(Duration::ZERO, None);
    assert_eq!(r.copies.len(), 1);
    assert!(!r.to_text().contains("copies:"));
}

#[test]
fn the_summary_says_what_the_sample_kept() {
    let stats = SampleStats {
        percent: 10.0,
        unit: super::super::sample::SampleUnit::Connection,
        units: 1000,
        units_kept: 101,
        requests: 1000,
        requests_kept: 101,
    };
    let mut t = tally(101, 1);
    t.source_done(SourceSummary {
        name: "recording r".into(),
        sample: Some(stats),
        ..SourceSummary::default()
    });
    let r = t.report(Duration::ZERO, None);
    assert!(
        r.to_text()
            .contains("sample 10%: kept 101 of 1000 connections (101 of 1000 requests)"),
        "{}",
        r.to_text()
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["sample"]["unit"], "connection");
    assert_eq!(json["sample"]["units_kept"], 101);
}

#[test]
fn the_first_error_text_of_each_kind_is_kept_cut_to_a_line_and_shown() {
    let mut t = tally(5, 1);
    let at = Duration::ZERO;
    t.not_sent(0, at, at, FailureKind::ConnectTimeout);
    t.not_sent(
        0,
        at,
        at,
        Failure::new(FailureKind::ConnectError, "Network is unreachable"),
    );
    t.not_sent(
        0,
        at,
        at,
        Failure::new(FailureKind::ConnectError, "a later one"),
    );
    t.failed(
        0,
        at,
        Failure::new(FailureKind::Http2Error, "é".repeat(400)),
    );
    t.failed(0, at, FailureKind::Http2Error);
    let r = t.report(Duration::from_secs(1), None);
    assert_eq!(r.failures.get("connect_error"), Some(&2));
    assert_eq!(r.failures.get("http2_error"), Some(&2));
    // The first wording of each kind, none for a kind that had nothing to add.
    assert_eq!(
        r.failure_details.get("connect_error").map(String::as_str),
        Some("Network is unreachable")
    );
    assert!(!r.failure_details.contains_key("connect_timeout"));
    // A long text is cut on a character boundary, and says so.
    let cut = &r.failure_details["http2_error"];
    assert!(
        cut.len() <= DETAIL_MAX + '…'.len_utf8() && cut.ends_with('…'),
        "{cut}"
    );
    let text = r.to_text();
    assert!(
        text.contains("failures: connect_error=2 connect_timeout=1 http2_error=2\n  first connect_error: Network is unreachable\n"),
        "{text}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["failure_details"]["connect_error"],
        "Network is unreachable"
    );
    // Nothing failed, nothing to say: the field is left out.
    let quiet = serde_json::to_value(tally(1, 1).report(Duration::ZERO, None)).unwrap();
    assert!(quiet.get("failure_details").is_none(), "{quiet}");
}

#[test]
fn requests_never_written_are_not_taken_for_answers_whatever_their_failure_kind() {
    let mut t = tally(6, 1);
    let at = Duration::ZERO;
    for _ in 0..3 {
        t.sent(0, at, at);
    }
    t.completed(0, at, 200, None, 0, at);
    t.failed(0, at, FailureKind::ResponseTimeout);
    // Not written: a session that would not open, a connection refused.
    t.not_sent(0, at, at, FailureKind::Http2Error);
    t.not_sent(0, at, at, FailureKind::ConnectRefused);
    // One of the three sent is still waiting for its answer.
    assert_eq!(t.in_flight(), 1);
    let r = t.report(Duration::from_secs(1), None);
    assert_eq!((r.sent, r.completed, r.failed, r.in_flight), (3, 1, 3, 1));
    assert_eq!(r.not_run, 1);
}
