//! The diff part of the report page: per-endpoint latency recorded vs replayed, the endpoints
//! table, and each endpoint's differing fields, noise fields and collapsed examples.
//!
//! Stable hooks (tests rely on them): `table#endpoints`, one `tr[data-endpoint]` per endpoint
//! with `td[data-col]` cells, `svg#chart-endpoint-latency`, `details.example[data-request-id]`,
//! `li.field[data-field]` for differences that count and `li.noise[data-field]` for noise, in
//! the endpoint lists and in the examples alike.

use std::fmt::Write as _;

use crate::replay::diff::{
    DiffKind, DiffSummary, Difference, EndpointSummary, Example, FieldSummary,
};
use crate::replay::html::bodies::body_panes;
use crate::replay::html::svg::{self, BarChart, BarGroup};
use crate::replay::html::text::{escape, grouped, ms};

/// Endpoints drawn in the latency bar chart; the table lists them all.
const CHART_ENDPOINTS: usize = 20;

/// The per-endpoint diff: latency chart, table, then each endpoint's fields and examples.
pub fn diff_section(out: &mut String, d: &DiffSummary) {
    let _ = write!(
        out,
        "<section id=\"diff\"><h2>Differences per endpoint</h2><p class=\"note\">{} requests: {} \
         identical, {} different, {} failed, {} not compared{}.</p>",
        grouped(d.requests),
        grouped(d.identical),
        grouped(d.different),
        grouped(d.failed),
        grouped(d.not_compared),
        if d.baseline {
            format!(
                "; noise learned from the baseline ({} baseline requests failed)",
                d.baseline_failed
            )
        } else {
            String::new()
        }
    );
    endpoint_latency_chart(out, &d.endpoints);
    endpoints_table(out, &d.endpoints);
    if d.endpoints_folded > 0 {
        let _ = write!(
            out,
            "<p class=\"note\">{} more endpoints are folded into “(other endpoints)”.</p>",
            d.endpoints_folded
        );
    }
    for (i, e) in d.endpoints.iter().enumerate() {
        endpoint_details(out, i, e, d.baseline);
    }
    out.push_str("</section>");
}

/// p50 and p99, recorded and replayed, per endpoint (the first `CHART_ENDPOINTS`).
fn endpoint_latency_chart(out: &mut String, endpoints: &[EndpointSummary]) {
    let groups: Vec<BarGroup> = endpoints
        .iter()
        .take(CHART_ENDPOINTS)
        .map(|e| BarGroup {
            label: e.endpoint.clone(),
            values: vec![
                e.latency.recorded_p50_ms,
                e.latency.replayed_p50_ms,
                e.latency.recorded_p99_ms,
                e.latency.replayed_p99_ms,
            ],
        })
        .collect();
    let more = endpoints.len().saturating_sub(CHART_ENDPOINTS);
    let _ = write!(
        out,
        "<h3>Latency per endpoint, recorded vs replayed</h3>{}{}",
        svg::bar_chart(&BarChart {
            id: "chart-endpoint-latency",
            title: "Latency per endpoint, recorded vs replayed",
            unit: "ms",
            series: &[
                ("p50 recorded", "#93c5fd"),
                ("p50 replayed", "#fdba74"),
                ("p99 recorded", "#1d4ed8"),
                ("p99 replayed", "#c2410c"),
            ],
            groups: &groups,
            empty_text: "No latency measured per endpoint.",
        }),
        if more > 0 {
            format!(
                "<p class=\"note\">The first {CHART_ENDPOINTS} endpoints; the table has all.</p>"
            )
        } else {
            String::new()
        }
    );
}

/// The endpoints table with its two-row head (`different in`, `p50`, `p99` groups).
fn endpoints_table(out: &mut String, endpoints: &[EndpointSummary]) {
    out.push_str(
        "<div class=\"scroll\"><table id=\"endpoints\"><thead><tr><th rowspan=\"2\">endpoint</th>\
         <th rowspan=\"2\" class=\"num\">requests</th><th rowspan=\"2\" class=\"num\">identical</th>\
         <th rowspan=\"2\" class=\"num\">different</th><th colspan=\"3\" class=\"group\">different \
         in</th><th rowspan=\"2\" class=\"num\">failed</th><th rowspan=\"2\" class=\"num\">not \
         compared</th><th colspan=\"2\" class=\"group\">p50</th><th colspan=\"2\" class=\"group\">\
         p99</th></tr><tr><th class=\"num\">status</th><th class=\"num\">headers</th><th \
         class=\"num\">body</th><th class=\"num\">recorded</th><th class=\"num\">replayed</th>\
         <th class=\"num\">recorded</th><th class=\"num\">replayed</th></tr></thead><tbody>",
    );
    if endpoints.is_empty() {
        out.push_str("<tr><td colspan=\"13\" class=\"empty\">No requests compared.</td></tr>");
    }
    for (i, e) in endpoints.iter().enumerate() {
        endpoint_row(out, i, e);
    }
    out.push_str("</tbody></table></div>");
}

/// One endpoint's counts and latencies; differing counts and slower latencies stand out.
fn endpoint_row(out: &mut String, i: usize, e: &EndpointSummary) {
    let name = escape(&e.endpoint);
    let _ = write!(
        out,
        "<tr data-endpoint=\"{name}\"><td class=\"endpoint\"><a href=\"#endpoint-{i}\"><code>{name}\
         </code></a></td>"
    );
    let count = |out: &mut String, col: &str, n: u64, bad: bool| {
        let class = if bad && n > 0 { "num bad" } else { "num" };
        let _ = write!(out, "<td data-col=\"{col}\" class=\"{class}\">{n}</td>");
    };
    count(out, "requests", e.requests, false);
    count(out, "identical", e.identical, false);
    count(out, "different", e.different, true);
    count(out, "status", e.different_status, true);
    count(out, "headers", e.different_headers, true);
    count(out, "body", e.different_body, true);
    count(out, "failed", e.failed, true);
    count(out, "not-compared", e.not_compared, false);
    let l = &e.latency;
    for (col, recorded, replayed) in [
        ("p50", l.recorded_p50_ms, l.replayed_p50_ms),
        ("p99", l.recorded_p99_ms, l.replayed_p99_ms),
    ] {
        // Slower by a fifth or more is worth a look.
        let slower =
            matches!((recorded, replayed), (Some(a), Some(b)) if b > a * 1.2 && b - a > 1.0);
        let _ = write!(
            out,
            "<td data-col=\"{col}-recorded\" class=\"num\">{}</td><td data-col=\"{col}-replayed\" \
             class=\"num{}\">{}</td>",
            ms(recorded),
            if slower { " warn" } else { "" },
            ms(replayed)
        );
    }
    out.push_str("</tr>");
}

/// One endpoint's differing fields, noise fields and examples.
fn endpoint_details(out: &mut String, i: usize, e: &EndpointSummary, baseline: bool) {
    if e.fields.is_empty() && e.noise.is_empty() && e.examples.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<article class=\"endpoint\" id=\"endpoint-{i}\"><h3><code>{}</code></h3>",
        escape(&e.endpoint)
    );
    if !e.fields.is_empty() {
        out.push_str("<h4>Differing fields</h4><ul class=\"fields\">");
        for f in &e.fields {
            field_summary(out, f, "field", baseline);
        }
        out.push_str("</ul>");
    }
    if !e.noise.is_empty() {
        out.push_str(
            "<h4>Noise (differs on the baseline too; not counted)</h4><ul class=\"fields\">",
        );
        for f in &e.noise {
            field_summary(out, f, "noise", baseline);
        }
        out.push_str("</ul>");
    }
    if !e.examples.is_empty() {
        let _ = write!(out, "<h4>Examples ({})</h4>", e.examples.len());
        for x in &e.examples {
            example(out, x);
        }
    }
    out.push_str("</article>");
}

/// One field of an endpoint: how often it differed, on the candidate and on the baseline
/// (when there is one).
fn field_summary(out: &mut String, f: &FieldSummary, class: &str, baseline: bool) {
    let ids: Vec<String> = f.example_ids.iter().map(|id| format!("#{id}")).collect();
    let on_baseline = if baseline {
        format!(", {} on the baseline", f.baseline)
    } else {
        String::new()
    };
    let _ = write!(
        out,
        "<li class=\"{class}\" data-field=\"{field}\"><code>{field}</code> <span class=\"count\">\
         {} replayed{on_baseline}</span>{}</li>",
        f.candidate,
        if ids.is_empty() {
            String::new()
        } else {
            format!(" <span class=\"ids\">e.g. {}</span>", ids.join(", "))
        },
        field = escape(&f.field)
    );
}

/// One example request, collapsed: its differences, then both bodies side by side.
fn example(out: &mut String, x: &Example) {
    let noise = x.differences.iter().filter(|d| d.noise).count();
    let _ = write!(
        out,
        "<details class=\"example\" data-request-id=\"{id}\" id=\"example-{id}\"><summary>\
         <span class=\"rid\">#{id}</span> <code>{}</code> <span class=\"pill {}\">{} → {}</span> \
         <span class=\"count\">{} differences{}</span></summary><ul class=\"differences\">",
        escape(&x.request),
        if x.recorded_status == x.replayed_status {
            "s2"
        } else {
            "s5"
        },
        x.recorded_status,
        x.replayed_status,
        x.differences.len() - noise,
        if noise > 0 {
            format!(", {noise} noise")
        } else {
            String::new()
        },
        id = x.request_id
    );
    for d in &x.differences {
        difference(out, d);
    }
    out.push_str("</ul>");
    out.push_str(&body_panes(x));
    out.push_str("</details>");
}

/// One difference of an example: the field, how it differs, the values before and after.
fn difference(out: &mut String, d: &Difference) {
    let kind = match d.kind {
        DiffKind::Changed => "changed",
        DiffKind::Added => "added",
        DiffKind::Removed => "removed",
        DiffKind::TypeChanged => "type changed",
    };
    let value = |v: &Option<String>| match v {
        Some(v) => format!("<code>{}</code>", escape(v)),
        None => "<em>absent</em>".to_string(),
    };
    let at = d
        .offset
        .map(|o| format!(" at byte {o}"))
        .unwrap_or_default();
    let _ = write!(
        out,
        "<li class=\"{}\" data-field=\"{field}\"><code class=\"name\">{field}</code> {kind}{at}: \
         <span class=\"was\">{}</span> → <span class=\"now\">{}</span></li>",
        if d.noise { "noise" } else { "field" },
        value(&d.recorded),
        value(&d.replayed),
        field = escape(&d.field)
    );
}
