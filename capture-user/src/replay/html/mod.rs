//! The replay report as one self-contained HTML page: summary numbers, throughput and latency
//! over time, the status mix and, with `--diff`, the per-endpoint diff with examples. The page
//! fetches nothing (inline CSS and SVG, no JS), so it opens from a CI artifact or a laptop
//! offline, and the agent serves the same bytes.
//!
//! Bodies, URIs, header values and names are hostile input: all text goes through `escape`.
//! Tests find parts by stable hooks: `table#endpoints` with `tr[data-endpoint]` and
//! `td[data-col]`, `svg#chart-throughput`, `svg#chart-latency`, `svg#chart-endpoint-latency`,
//! `table#statuses`; the diff part's hooks are listed in `diffview`.

use std::fmt::Write as _;

use crate::replay::diff::DiffSummary;
use crate::replay::report::ReplayReport;
use crate::replay::sample::SampleUnit;
use crate::replay::timeline::TimelinePoint;
use diffview::diff_section;
use style::CSS;
use svg::{LineChart, Series};
use text::{escape, finite_or_zero, grouped, ms, percent};

mod bodies;
mod diffview;
mod style;
mod svg;
mod text;

/// Everything the page shows; the caller gathers it so rendering stays pure.
pub struct ReportPage<'a> {
    /// The page's heading, "replay of recording peak-monday".
    pub title: &'a str,
    /// RFC 3339 text, given by the caller so rendering needs no clock.
    pub generated_at: &'a str,
    /// Where the replay was sent, as given on the command line.
    pub target: &'a str,
    /// Where noise was learned from (`--baseline`), if anywhere.
    pub baseline: Option<&'a str>,
    /// The replay's own summary: counts, statuses, failures, percentiles.
    pub report: &'a ReplayReport,
    /// `Timeline::points()`, for the throughput and latency charts.
    pub timeline: &'a [TimelinePoint],
    /// The `--diff` summary; None leaves the diff part out.
    pub diff: Option<&'a DiffSummary>,
}

/// The whole page.
/// The page of a replay's report, generated now: what `replay --report` writes and the agent
/// serves.
pub fn report_page(
    title: &str,
    target: &str,
    baseline: Option<&str>,
    report: &ReplayReport,
) -> String {
    let generated_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    render(&ReportPage {
        title,
        generated_at: &generated_at.to_string(),
        target,
        baseline,
        report,
        timeline: &report.timeline,
        diff: report.diff.as_ref(),
    })
}

pub fn render(page: &ReportPage<'_>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body><main>",
        escape(page.title)
    );
    header(&mut out, page);
    summary(&mut out, page.report, page.diff);
    timeline_charts(&mut out, page.timeline);
    status_mix(&mut out, page.report);
    if let Some(diff) = page.diff {
        diff_section(&mut out, diff);
    }
    source(&mut out, page.report);
    let _ = writeln!(
        out,
        "<footer>capture replay report · generated {}</footer></main></body></html>",
        escape(page.generated_at)
    );
    out
}

/// Title, target, baseline, and banners for an early end or failures.
fn header(out: &mut String, page: &ReportPage<'_>) {
    let _ = write!(
        out,
        "<header><h1>{}</h1><dl class=\"meta\"><dt>target</dt><dd><code>{}</code></dd>",
        escape(page.title),
        escape(page.target)
    );
    if let Some(baseline) = page.baseline {
        let _ = write!(
            out,
            "<dt>baseline</dt><dd><code>{}</code></dd>",
            escape(baseline)
        );
    }
    let _ = write!(
        out,
        "<dt>generated</dt><dd>{}</dd></dl></header>",
        escape(page.generated_at)
    );
    if let Some(why) = &page.report.ended_early {
        let _ = write!(
            out,
            "<p class=\"banner warn\">Ended early: {}</p>",
            escape(why)
        );
    }
    if page.report.failed > 0 {
        let _ = write!(
            out,
            "<p class=\"banner bad\">{} requests got no response (see failures below).</p>",
            page.report.failed
        );
    }
}

/// A number card: label, value, optional detail line.
fn card(out: &mut String, label: &str, value: &str, detail: &str, tone: &str) {
    let _ = write!(
        out,
        "<div class=\"card {tone}\"><div class=\"label\">{}</div><div class=\"value\">{}</div>\
         <div class=\"detail\">{}</div></div>",
        escape(label),
        escape(value),
        escape(detail)
    );
}

/// The headline numbers as cards, with an empty-state line when nothing was sent.
fn summary(out: &mut String, r: &ReplayReport, diff: Option<&DiffSummary>) {
    out.push_str("<section><h2>Summary</h2>");
    if r.sent == 0 && r.completed == 0 && r.failed == 0 {
        out.push_str("<p class=\"empty\">No requests were sent in this replay.</p>");
    }
    out.push_str("<div class=\"cards\">");
    let sent = format!(
        "{} planned · {} not run",
        grouped(r.planned),
        grouped(r.not_run)
    );
    card(out, "sent", &grouped(r.sent), &sent, "");
    let done = format!(
        "{} of sent · {} in flight",
        percent(r.completed, r.sent),
        r.in_flight
    );
    card(out, "completed", &grouped(r.completed), &done, "");
    let tone = if r.failed > 0 { "bad" } else { "" };
    card(
        out,
        "failed",
        &grouped(r.failed),
        &percent(r.failed, r.sent),
        tone,
    );
    let rate = format!("{:.1}", finite_or_zero(r.requests_per_second));
    let elapsed = format!(
        "over {:.1} s · {} connections",
        finite_or_zero(r.elapsed_s),
        r.connections
    );
    card(out, "requests / s", &rate, &elapsed, "");
    let l = &r.latency_ms;
    let measured = |v: f64| (l.count > 0).then_some(v);
    let spread = format!(
        "p90 {} · p99 {} · max {}",
        ms(measured(l.p90)),
        ms(measured(l.p99)),
        ms(measured(l.max))
    );
    card(out, "latency p50", &ms(measured(l.p50)), &spread, "");
    let lag = &r.schedule_lag_ms;
    let lag_p99 = ms((lag.count > 0).then_some(lag.p99));
    card(
        out,
        "schedule lag p99",
        &lag_p99,
        "how late sends started",
        "",
    );
    let tone = if r.status_mismatches > 0 { "warn" } else { "" };
    card(
        out,
        "status changed",
        &r.status_mismatches.to_string(),
        "vs recorded",
        tone,
    );
    if let Some(d) = diff {
        let tone = if d.different > 0 { "bad" } else { "good" };
        let compared = d.identical + d.different;
        let detail = format!(
            "{} identical of {} compared",
            grouped(d.identical),
            grouped(compared)
        );
        card(out, "different", &grouped(d.different), &detail, tone);
    }
    out.push_str("</div></section>");
}

/// Requests per second and latency percentiles over the replay.
fn timeline_charts(out: &mut String, timeline: &[TimelinePoint]) {
    let mid = |p: &TimelinePoint| p.start_s + p.width_s / 2.0;
    let series = |name, color, value: fn(&TimelinePoint) -> Option<f64>| Series {
        name,
        color,
        dash: false,
        points: timeline.iter().map(|p| (mid(p), value(p))).collect(),
    };
    let mut throughput = vec![
        series("answered", "#16a34a", |p| Some(p.answered_per_s)),
        // Dashed and on top: sent and answered mostly overlap.
        Series {
            dash: true,
            ..series("sent", "#2563eb", |p| Some(p.sent_per_s))
        },
    ];
    if timeline.iter().any(|p| p.failed_per_s > 0.0) {
        throughput.push(series("failed", "#dc2626", |p| Some(p.failed_per_s)));
    }
    let latency = [
        series("p50", "#0d9488", |p| p.p50_ms),
        series("p90", "#d97706", |p| p.p90_ms),
        series("p99", "#be123c", |p| p.p99_ms),
    ];
    let width = timeline.first().map_or(1.0, |p| p.width_s);
    let _ = write!(
        out,
        "<section><h2>Throughput</h2><p class=\"note\">Requests per second, per {} interval.</p>{}\
         </section><section><h2>Latency over time</h2><p class=\"note\">Percentiles of the \
         responses answered in each interval.</p>{}</section>",
        interval(width),
        svg::line_chart(&LineChart {
            id: "chart-throughput",
            title: "Requests sent and answered per second",
            y_unit: "requests / s",
            series: &throughput,
            empty_text: "No requests in this replay.",
        }),
        svg::line_chart(&LineChart {
            id: "chart-latency",
            title: "Latency percentiles over time",
            y_unit: "ms",
            series: &latency,
            empty_text: "No responses in this replay.",
        })
    );
}

/// "1 s", "2 min 8 s".
fn interval(seconds: f64) -> String {
    let s = finite_or_zero(seconds).round() as u64;
    match (s / 60, s % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// Statuses with their share, status changes against the recording, failures by kind.
fn status_mix(out: &mut String, r: &ReplayReport) {
    out.push_str("<section><h2>Status mix</h2><div class=\"tables\">");
    let total: u64 = r.statuses.values().sum();
    out.push_str(
        "<table id=\"statuses\"><thead><tr><th>status</th><th class=\"num\">responses</th>\
         <th class=\"num\">share</th><th class=\"bar\"></th></tr></thead><tbody>",
    );
    if r.statuses.is_empty() {
        out.push_str("<tr><td colspan=\"4\" class=\"empty\">No responses.</td></tr>");
    }
    for (status, &count) in &r.statuses {
        let class = match status.as_bytes().first() {
            Some(b'2') => "s2",
            Some(b'3') => "s3",
            Some(b'4') => "s4",
            Some(b'5') => "s5",
            _ => "s1",
        };
        let share = if total == 0 {
            0.0
        } else {
            count as f64 * 100.0 / total as f64
        };
        let _ = write!(
            out,
            "<tr data-status=\"{s}\"><td><span class=\"pill {class}\">{s}</span></td>\
             <td class=\"num\">{count}</td><td class=\"num\">{}</td><td class=\"bar\"><span \
             class=\"fill {class}\" style=\"width:{share:.1}%\"></span></td></tr>",
            percent(count, total),
            s = escape(status)
        );
    }
    out.push_str("</tbody></table>");
    let mismatches = r
        .mismatches
        .iter()
        .map(|m| (format!("{} → {}", m.recorded, m.replayed), m.count));
    small_table(
        out,
        "status-mismatches",
        "recorded → replayed",
        mismatches,
        "No status changed.",
    );
    failures_table(out, r);
    out.push_str("</div></section>");
}

/// Failures by kind, each with the first error text of its kind under it when there was one.
fn failures_table(out: &mut String, r: &ReplayReport) {
    out.push_str(
        "<table id=\"failures\"><thead><tr><th>failure</th><th class=\"num\">count</th></tr>\
         </thead><tbody>",
    );
    if r.failures.is_empty() {
        out.push_str("<tr><td colspan=\"2\" class=\"empty\">No failures.</td></tr>");
    }
    for (kind, count) in &r.failures {
        let _ = write!(out, "<tr data-failure=\"{k}\"><td>{k}", k = escape(kind));
        if let Some(detail) = r.failure_details.get(kind) {
            let _ = write!(
                out,
                "<div class=\"failure-detail\">first: {}</div>",
                escape(detail)
            );
        }
        let _ = write!(out, "</td><td class=\"num\">{count}</td></tr>");
    }
    out.push_str("</tbody></table>");
}

/// A two-column table of names and counts, with a line for when it is empty.
fn small_table(
    out: &mut String,
    id: &str,
    heading: &str,
    rows: impl Iterator<Item = (String, u64)>,
    empty: &str,
) {
    let _ = write!(
        out,
        "<table id=\"{id}\"><thead><tr><th>{}</th><th class=\"num\">count</th></tr></thead>\
         <tbody>",
        escape(heading)
    );
    let mut any = false;
    for (name, count) in rows {
        any = true;
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{count}</td></tr>",
            escape(&name)
        );
    }
    if !any {
        let _ = write!(
            out,
            "<tr><td colspan=\"2\" class=\"empty\">{}</td></tr>",
            escape(empty)
        );
    }
    out.push_str("</tbody></table>");
}

/// What the source held and what was left out: why the counts are what they are.
fn source(out: &mut String, r: &ReplayReport) {
    let Some(s) = &r.source else {
        return;
    };
    let _ = write!(
        out,
        "<section><h2>Source</h2><p>{}: {} messages, {} complete requests ({} incomplete skipped, \
         {} filtered out",
        escape(&s.name),
        s.stats.messages,
        s.stats.requests,
        s.stats.incomplete_skipped,
        s.filtered_out
    );
    if let Some(shard) = s.shard {
        let _ = write!(
            out,
            ", shard {}/{}: {} in other parts",
            shard.index, shard.count, s.other_shards
        );
    }
    out.push_str(").</p>");
    if let Some(sample) = &r.sample {
        let _ = write!(
            out,
            "<p>Sample {}%: kept {} of {} {} ({} of {} requests).</p>",
            sample.percent,
            sample.units_kept,
            sample.units,
            match sample.unit {
                SampleUnit::Connection => "connections",
                SampleUnit::Request => "requests",
            },
            sample.requests_kept,
            sample.requests
        );
    }
    if let Some(e) = &s.read_error {
        let _ = write!(
            out,
            "<p class=\"banner bad\">Reading the source failed: {}</p>",
            escape(e)
        );
    }
    out.push_str("</section>");
}

#[cfg(test)]
mod tests;
