//! The diff summary's shape: what `replay --diff` reports per endpoint, in JSON (the agent's
//! replay JSON, `--json`) and in the HTML report. Helper A implements the code that fills these;
//! helper B renders them. Do not change field names or types without telling the integrator.

use serde::Serialize;

/// Which part of a response a difference is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldClass {
    Status,
    Header,
    Body,
}

/// How a field differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// Present in both, different values.
    Changed,
    /// Only in the replayed response.
    Added,
    /// Only in the recorded response.
    Removed,
    /// Present in both with different JSON types (or JSON vs not JSON).
    TypeChanged,
}

/// One field that differs between the recorded and a replayed response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Difference {
    /// "status", "header:<lowercase name>", "json:$.items[3].price", or "body" (non-JSON body).
    pub field: String,
    pub class: FieldClass,
    pub kind: DiffKind,
    /// The recorded value, rendered short (JSON text, header value, status; for "body": an
    /// excerpt around the first differing offset). None when absent.
    pub recorded: Option<String>,
    pub replayed: Option<String>,
    /// "body" only: the first differing byte offset in the decoded bodies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Set in summaries: the field was found to be noise for its endpoint (see `--baseline`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub noise: bool,
}

/// Latency percentiles in milliseconds (count 0: nothing measured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LatencyPair {
    pub recorded_p50_ms: Option<f64>,
    pub recorded_p99_ms: Option<f64>,
    pub replayed_p50_ms: Option<f64>,
    pub replayed_p99_ms: Option<f64>,
}

/// How often one field differed on one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldSummary {
    pub field: String,
    pub class: FieldClass,
    /// Requests whose replayed (candidate) response differed from the recording on it.
    pub candidate: u64,
    /// With `--baseline`: requests whose baseline response differed from the recording on it.
    pub baseline: u64,
    /// Up to 3 request ids where the candidate differed on it.
    pub example_ids: Vec<u64>,
}

/// One differing request kept as an example, with both bodies to show side by side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Example {
    /// The recorded request's id (as in `--diff-out`).
    pub request_id: u64,
    /// "GET /items/17?x=1".
    pub request: String,
    pub recorded_status: u16,
    pub replayed_status: u16,
    /// Every difference of this request (noise ones flagged).
    pub differences: Vec<Difference>,
    /// Decoded bodies, JSON pretty-printed, cut at 4 KiB (lossy UTF-8; binary shown as
    /// "<N bytes of binary>").
    pub recorded_body: String,
    pub replayed_body: String,
    /// Either body was cut to fit.
    pub bodies_cut: bool,
}

/// The diff of one endpoint (method and path with ids collapsed).
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EndpointSummary {
    /// "GET /items/{id}".
    pub endpoint: String,
    pub requests: u64,
    /// Compared and no difference outside noise.
    pub identical: u64,
    /// Compared and at least one difference outside noise.
    pub different: u64,
    /// Of `different`: requests with a (non-noise) difference in the status, the headers,
    /// the body (a request can count in several).
    pub different_status: u64,
    pub different_headers: u64,
    pub different_body: u64,
    /// The replayed request got no response (connect error, timeout, ...).
    pub failed: u64,
    /// No recorded response to compare with (beyond the look-ahead, or not recorded).
    pub not_compared: u64,
    pub latency: LatencyPair,
    /// Fields outside noise, most frequent first (at most 10).
    pub fields: Vec<FieldSummary>,
    /// With `--baseline`: fields found to be noise, most frequent first (at most 10).
    pub noise: Vec<FieldSummary>,
    /// Up to 5 differing requests, showing every field outside noise at least once if they can.
    pub examples: Vec<Example>,
}

/// The diff of a whole replay.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DiffSummary {
    /// A baseline target was asked for: noise is learned from it.
    pub baseline: bool,
    pub requests: u64,
    pub identical: u64,
    pub different: u64,
    pub failed: u64,
    pub not_compared: u64,
    /// The baseline request failed (those requests are compared without noise learning).
    pub baseline_failed: u64,
    /// Endpoints with a difference first (most different first), then by requests.
    pub endpoints: Vec<EndpointSummary>,
    /// Endpoints beyond the cap, folded into one entry named "(other endpoints)".
    pub endpoints_folded: u64,
}

/// Endpoints shown by `to_text`; the rest are counted in one line.
const TEXT_ENDPOINTS: usize = 20;
/// Lines of `to_text` are cut to this many characters to fit a terminal.
const TEXT_LINE_CHARS: usize = 119;
/// Endpoint names are cut to this many characters so their counts stay on the line.
const TEXT_ENDPOINT_CHARS: usize = 48;

impl DiffSummary {
    /// The terminal summary: totals, then per endpoint (most different first) its counts and
    /// latency, the fields that differ with example request ids, and the noise fields with
    /// their baseline/candidate counts.
    pub fn to_text(&self) -> String {
        let mut lines = vec![self.totals_line()];
        for endpoint in self.endpoints.iter().take(TEXT_ENDPOINTS) {
            lines.push(endpoint.text_line());
            for field in &endpoint.fields {
                let ids: Vec<String> = field
                    .example_ids
                    .iter()
                    .map(|id| format!("#{id}"))
                    .collect();
                lines.push(format!(
                    "    {} {}× (e.g. {})",
                    field.field,
                    field.candidate,
                    ids.join(" ")
                ));
            }
            for field in &endpoint.noise {
                let name = field.field.strip_prefix("json:").unwrap_or(&field.field);
                lines.push(format!(
                    "    noise: {name} (baseline {}/{})",
                    field.baseline, field.candidate
                ));
            }
        }
        let hidden = self.endpoints.len().saturating_sub(TEXT_ENDPOINTS);
        if hidden > 0 {
            lines.push(format!("  ... {hidden} more endpoints"));
        }
        if self.endpoints_folded > 0 {
            lines.push(format!(
                "  {} endpoints beyond the cap are counted together as \"(other endpoints)\"",
                self.endpoints_folded
            ));
        }
        let mut text = String::new();
        for line in lines {
            text.push_str(&crate::replay::diff::compare::cut_chars(
                &line,
                TEXT_LINE_CHARS,
            ));
            text.push('\n');
        }
        text
    }

    fn totals_line(&self) -> String {
        let mut line = format!(
            "diff: {} requests, {} identical, {} different",
            self.requests, self.identical, self.different
        );
        if self.failed > 0 {
            line.push_str(&format!(", {} failed", self.failed));
        }
        if self.not_compared > 0 {
            line.push_str(&format!(", {} not compared", self.not_compared));
        }
        if self.baseline {
            line.push_str(&format!(
                "; noise learned from baseline ({} baseline failed)",
                self.baseline_failed
            ));
        }
        line
    }
}

impl EndpointSummary {
    /// "  GET /x  10 req  8 same  2 diff (status 1, body 2)  p50 1.0→1.2ms  p99 0.31→12ms".
    fn text_line(&self) -> String {
        let name = crate::replay::diff::compare::cut_chars(&self.endpoint, TEXT_ENDPOINT_CHARS);
        let mut line = format!("  {name}  {} req  {} same", self.requests, self.identical);
        if self.different > 0 {
            let parts: Vec<String> = [
                ("status", self.different_status),
                ("headers", self.different_headers),
                ("body", self.different_body),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
            line.push_str(&format!("  {} diff ({})", self.different, parts.join(", ")));
        }
        if self.failed > 0 {
            line.push_str(&format!("  {} failed", self.failed));
        }
        if self.not_compared > 0 {
            line.push_str(&format!("  {} not compared", self.not_compared));
        }
        // Two significant digits at least: sub-millisecond answers are common.
        let ms = |v: Option<f64>| {
            v.map_or_else(
                || "-".to_string(),
                |v| match v {
                    v if v >= 10.0 => format!("{v:.0}"),
                    v if v >= 1.0 => format!("{v:.1}"),
                    v => format!("{v:.2}"),
                },
            )
        };
        let l = &self.latency;
        line.push_str(&format!(
            "  p50 {}→{}ms  p99 {}→{}ms",
            ms(l.recorded_p50_ms),
            ms(l.replayed_p50_ms),
            ms(l.recorded_p99_ms),
            ms(l.replayed_p99_ms)
        ));
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, different: u64) -> EndpointSummary {
        EndpointSummary {
            endpoint: name.to_string(),
            requests: 10,
            identical: 10 - different,
            different,
            different_status: 0,
            different_headers: 0,
            different_body: different,
            failed: 1,
            not_compared: 0,
            latency: LatencyPair {
                recorded_p50_ms: Some(1.0),
                recorded_p99_ms: Some(3.0),
                replayed_p50_ms: Some(1.25),
                replayed_p99_ms: None,
            },
            fields: Vec::new(),
            noise: Vec::new(),
            examples: Vec::new(),
        }
    }

    fn field(name: &str, candidate: u64, baseline: u64) -> FieldSummary {
        FieldSummary {
            field: name.to_string(),
            class: FieldClass::Body,
            candidate,
            baseline,
            example_ids: vec![4, 9],
        }
    }

    #[test]
    fn text_summary_shows_counts_fields_and_noise() {
        let mut first = endpoint("GET /users/{id}", 2);
        first.fields.push(field("json:$.price", 2, 0));
        first.noise.push(field("json:$.ts", 10, 10));
        let mut endpoints = vec![first];
        endpoints.extend((0..22).map(|i| endpoint(&format!("GET /{}{i}", "x".repeat(200)), 0)));
        let summary = DiffSummary {
            baseline: true,
            requests: 230,
            identical: 206,
            different: 2,
            failed: 22,
            not_compared: 0,
            baseline_failed: 3,
            endpoints,
            endpoints_folded: 4,
        };
        let text = summary.to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "diff: 230 requests, 206 identical, 2 different, 22 failed; noise learned from baseline (3 baseline failed)"
        );
        assert_eq!(
            lines[1],
            "  GET /users/{id}  10 req  8 same  2 diff (body 2)  1 failed  p50 1.0→1.2ms  p99 3.0→-ms"
        );
        assert_eq!(lines[2], "    json:$.price 2× (e.g. #4 #9)");
        assert_eq!(lines[3], "    noise: $.ts (baseline 10/10)");
        assert!(text.contains("  ... 3 more endpoints\n"));
        assert!(text.contains("4 endpoints beyond the cap"));
        assert!(lines.iter().all(|l| l.chars().count() < 120), "{text}");
        assert!(
            lines[4].contains("p50 1.0→1.2ms"),
            "long names are cut, not the counts"
        );
    }
}
