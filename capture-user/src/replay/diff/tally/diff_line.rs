//! The `--diff-out` record of one differing request: everything needed to look at it later
//! without the summary, one JSON line each, so the file streams and greps well.

use serde::Serialize;

use super::{Baseline, Observation, Outcome};
use crate::replay::diff::summary::Difference;

/// One line of `--diff-out FILE.jsonl`: a request whose candidate response differed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    /// The recorded request's id (as in the summary's examples).
    pub request_id: u64,
    /// "GET /items/{id}".
    pub endpoint: String,
    /// "GET /items/17?x=1".
    pub request: String,
    /// Final statuses of the recorded and the candidate response.
    pub recorded_status: u16,
    pub replayed_status: u16,
    /// How the candidate differed from the recording (at most `MAX_DIFFERENCES`).
    pub differences: Vec<Difference>,
    /// With a baseline that answered: how the baseline differed from the recording.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_differences: Option<Vec<Difference>>,
    /// Fields in `differences` that the request's own baseline did not differ on.
    pub regressions: Vec<String>,
}

/// The `--diff-out` line of an observation: Some when the candidate differed.
pub fn diff_line(o: &Observation<'_>) -> Option<DiffLine> {
    let Outcome::Compared {
        recorded,
        replayed,
        candidate,
        baseline,
    } = o.outcome
    else {
        return None;
    };
    if candidate.differences.is_empty() {
        return None;
    }
    let baseline_differences = match baseline {
        Some(Baseline::Compared(b)) => Some(b.differences.clone()),
        _ => None,
    };
    let regressions = candidate
        .differences
        .iter()
        .filter(|d| {
            baseline_differences
                .as_ref()
                .is_none_or(|b| !b.iter().any(|x| x.field == d.field))
        })
        .map(|d| d.field.clone())
        .collect();
    Some(DiffLine {
        request_id: o.request_id,
        endpoint: o.endpoint.to_string(),
        request: o.request.to_string(),
        recorded_status: recorded.status,
        replayed_status: replayed.status,
        differences: candidate.differences.clone(),
        baseline_differences,
        regressions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::diff::compare::{DiffRules, compare};
    use crate::replay::diff::tally::tests::response;

    #[test]
    fn diff_lines_name_regressions() {
        let rules = DiffRules::default();
        let recorded = response(200, r#"{"ts":1,"p":1}"#);
        let replayed = response(200, r#"{"ts":2,"p":2}"#);
        let base = response(200, r#"{"ts":3,"p":1}"#);
        let candidate = compare(&recorded, &replayed, &rules);
        let baseline = compare(&recorded, &base, &rules);
        let mut o = Observation {
            endpoint: "GET /p",
            request_id: 7,
            request: "GET /p?q",
            recorded_latency: None,
            replayed_latency: None,
            outcome: Outcome::Compared {
                recorded: &recorded,
                replayed: &replayed,
                candidate: &candidate,
                baseline: Some(Baseline::Compared(&baseline)),
            },
        };
        let line = diff_line(&o).unwrap();
        assert_eq!(line.regressions, ["json:$.p"]);
        assert_eq!(line.baseline_differences.as_ref().map(Vec::len), Some(1));
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["differences"][0]["field"], "json:$.p");
        assert_eq!(json["request"], "GET /p?q");
        o.outcome = Outcome::Compared {
            recorded: &recorded,
            replayed: &replayed,
            candidate: &candidate,
            baseline: None,
        };
        let json = serde_json::to_value(diff_line(&o).unwrap()).unwrap();
        assert!(json.get("baseline_differences").is_none());
        assert_eq!(json["regressions"].as_array().map(Vec::len), Some(2));
    }
}
