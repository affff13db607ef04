//! Tests of the report page: its stable hooks, escaping, and the empty and diff-less cases.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::replay::diff::{
    DiffKind, Difference, EndpointSummary, Example, FieldClass, FieldSummary, LatencyPair,
};
use crate::replay::report::{Mismatch, Percentiles};
use crate::replay::timeline::Timeline;

fn empty_report() -> ReplayReport {
    ReplayReport {
        planned: 0,
        sent: 0,
        completed: 0,
        failed: 0,
        in_flight: 0,
        not_run: 0,
        failures: BTreeMap::new(),
        failure_details: BTreeMap::new(),
        statuses: BTreeMap::new(),
        grpc_statuses: BTreeMap::new(),
        status_mismatches: 0,
        mismatches: Vec::new(),
        connections: 0,
        response_body_bytes: 0,
        elapsed_s: 0.0,
        requests_per_second: f64::NAN,
        latency_ms: Percentiles::default(),
        schedule_lag_ms: Percentiles::default(),
        ended_early: None,
        copies: Vec::new(),
        sample: None,
        first_request_after_ms: None,
        source: None,
        timeline: Vec::new(),
        diff: None,
        diff_out_error: None,
        tls: None,
    }
}

fn busy_report() -> ReplayReport {
    ReplayReport {
        planned: 10,
        sent: 10,
        completed: 8,
        failed: 2,
        failures: BTreeMap::from([("response_timeout".into(), 1), ("bad_response".into(), 1)]),
        failure_details: BTreeMap::from([(
            "bad_response".into(),
            "the answer's bytes began \"<script>alert(2)</script>\"".into(),
        )]),
        statuses: BTreeMap::from([("200".into(), 7), ("500".into(), 1)]),
        grpc_statuses: BTreeMap::new(),
        status_mismatches: 1,
        mismatches: vec![Mismatch {
            recorded: 200,
            replayed: 500,
            count: 1,
        }],
        elapsed_s: 2.0,
        requests_per_second: 4.5,
        latency_ms: Percentiles {
            count: 9,
            p50: 10.0,
            p90: 20.0,
            p99: 30.0,
            max: 31.0,
        },
        ..empty_report()
    }
}

fn points() -> Vec<TimelinePoint> {
    let mut t = Timeline::new();
    for ms in (0..2000).step_by(200) {
        t.sent(Duration::from_millis(ms));
        t.answered(Duration::from_millis(ms + 10), Duration::from_millis(10));
    }
    t.points()
}

fn hostile_example() -> Example {
    Example {
        request_id: 7,
        request: "GET /items/7?q=\"'<b>&".into(),
        recorded_status: 200,
        replayed_status: 200,
        differences: vec![
            Difference {
                field: "json:$.note".into(),
                class: FieldClass::Body,
                kind: DiffKind::Changed,
                recorded: Some("\"a\"".into()),
                replayed: Some("\"</details><script>alert(1)</script>\"".into()),
                offset: None,
                noise: false,
            },
            Difference {
                field: "json:$.ts".into(),
                class: FieldClass::Body,
                kind: DiffKind::Changed,
                recorded: Some("1".into()),
                replayed: Some("2".into()),
                offset: None,
                noise: true,
            },
        ],
        recorded_body: "{\n  \"note\": \"a\",\n  \"ts\": 1\n}".into(),
        replayed_body: "{\n  \"note\": \"</details><script>alert(1)</script>\",\n  \"ts\": 2\n}"
            .into(),
        bodies_cut: true,
    }
}

fn field(name: &str) -> FieldSummary {
    FieldSummary {
        field: name.into(),
        class: FieldClass::Body,
        candidate: 1,
        baseline: 0,
        example_ids: vec![7],
    }
}

fn diff() -> DiffSummary {
    let endpoint = EndpointSummary {
        endpoint: "GET /items/{id}".into(),
        requests: 9,
        identical: 8,
        different: 1,
        different_status: 0,
        different_headers: 0,
        different_body: 1,
        failed: 1,
        not_compared: 0,
        latency: LatencyPair {
            recorded_p50_ms: Some(8.0),
            recorded_p99_ms: Some(20.0),
            replayed_p50_ms: Some(10.0),
            replayed_p99_ms: None,
        },
        fields: vec![field("json:$.note")],
        noise: vec![field("json:$.ts")],
        examples: vec![hostile_example()],
    };
    DiffSummary {
        baseline: true,
        requests: 10,
        identical: 8,
        different: 1,
        failed: 1,
        not_compared: 0,
        baseline_failed: 0,
        endpoints: vec![endpoint],
        endpoints_folded: 0,
    }
}

fn page<'a>(
    report: &'a ReplayReport,
    timeline: &'a [TimelinePoint],
    diff: Option<&'a DiffSummary>,
) -> String {
    render(&ReportPage {
        title: "replay of <recording> r",
        generated_at: "2024-01-01T00:00:00Z",
        target: "http://localhost:8080",
        baseline: diff.map(|_| "http://localhost:8081"),
        report,
        timeline,
        diff,
    })
}

/// Nothing on the page is fetched: no src, no remote links, no imports or url().
fn assert_self_contained(html: &str) {
    for needle in [
        "src=",
        "href=\"http",
        "href='http",
        "@import",
        "url(",
        "<link",
        "<script",
    ] {
        assert!(!html.contains(needle), "found {needle}");
    }
}

#[test]
fn the_page_has_its_hooks() {
    let (report, points, diff) = (busy_report(), points(), diff());
    let html = page(&report, &points, Some(&diff));
    for hook in [
        "<table id=\"endpoints\">",
        "<tr data-endpoint=\"GET /items/{id}\">",
        "<svg id=\"chart-throughput\"",
        "<svg id=\"chart-latency\"",
        "<svg id=\"chart-endpoint-latency\"",
        "<table id=\"statuses\">",
        "<details class=\"example\" data-request-id=\"7\"",
        "<li class=\"field\" data-field=\"json:$.note\">",
        "<li class=\"noise\" data-field=\"json:$.ts\">",
        "<td data-col=\"p99-replayed\" class=\"num\">–</td>",
        "<td data-col=\"different\" class=\"num bad\">1</td>",
        "<tr data-failure=\"bad_response\"><td>bad_response<div class=\"failure-detail\">first: ",
        "<tr data-failure=\"response_timeout\"><td>response_timeout</td>",
    ] {
        assert!(html.contains(hook), "missing {hook}");
    }
    for col in [
        "requests",
        "identical",
        "different",
        "status",
        "headers",
        "body",
        "failed",
        "p50-recorded",
        "p50-replayed",
        "p99-recorded",
        "p99-replayed",
    ] {
        assert_eq!(
            html.matches(&format!("data-col=\"{col}\"")).count(),
            1,
            "{col}"
        );
    }
    assert!(html.contains("<tr data-status=\"500\">"));
    assert!(html.contains("200 → 500"));
    assert_self_contained(&html);
}

#[test]
fn hostile_text_stays_text() {
    let (report, points, diff) = (busy_report(), points(), diff());
    let html = page(&report, &points, Some(&diff));
    assert!(!html.contains("<script"));
    // One </details> per example: the body's does not close it.
    assert_eq!(html.matches("</details>").count(), 1);
    assert!(html.contains("&lt;/details&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(html.contains("GET /items/7?q=&quot;&#39;&lt;b&gt;&amp;"));
    assert!(html.contains("began &quot;&lt;script&gt;alert(2)&lt;/script&gt;&quot;"));
    assert!(html.contains("<title>replay of &lt;recording&gt; r</title>"));
    assert!(html.contains("Bodies cut at 4 KiB."));
}

#[test]
fn without_a_diff_the_charts_and_statuses_remain() {
    let (report, points) = (busy_report(), points());
    let html = page(&report, &points, None);
    assert!(html.contains("<svg id=\"chart-throughput\""));
    assert!(html.contains("<svg id=\"chart-latency\""));
    assert!(html.contains("<table id=\"statuses\">"));
    assert!(!html.contains("id=\"endpoints\""));
    assert!(!html.contains("chart-endpoint-latency"));
    assert!(!html.contains("<details"));
    assert!(!html.contains("baseline</dt>"));
    assert!(html.contains("<polyline"));
    assert_self_contained(&html);
}

#[test]
fn an_empty_replay_says_so_without_nan() {
    let report = empty_report();
    let empty_diff = DiffSummary {
        baseline: false,
        requests: 0,
        identical: 0,
        different: 0,
        failed: 0,
        not_compared: 0,
        baseline_failed: 0,
        endpoints: Vec::new(),
        endpoints_folded: 0,
    };
    for diff in [None, Some(&empty_diff)] {
        let html = page(&report, &[], diff);
        assert!(html.contains("No requests were sent in this replay."));
        assert!(html.contains("No requests in this replay."));
        assert!(html.contains("No responses."));
        assert!(!html.contains("NaN") && !html.contains("inf"), "{html}");
        assert!(html.contains("<svg id=\"chart-latency\""));
    }
    let html = page(&report, &[], Some(&empty_diff));
    assert!(html.contains("No requests compared."));
    assert!(html.contains("No latency measured per endpoint."));
}

#[test]
fn intervals_are_named_in_minutes_and_seconds() {
    assert_eq!(interval(1.0), "1 s");
    assert_eq!(interval(128.0), "2 min 8 s");
    assert_eq!(interval(f64::NAN), "0 s");
}
