//! Accumulates per-endpoint diff counts over a replay of any length and summarises them.
//! With a baseline target (the recorded version, replayed alongside), a field the baseline
//! also differs on is noise (clocks, random ids), and only the rest counts as a regression.
//! Noise is learned as the replay goes, yet every request is classified against the final
//! noise sets: requests are kept as counts per signature (the set of fields they differed on),
//! not one by one. Memory is bounded by the caps below, whatever the number of requests.

mod diff_line;
mod per_endpoint;

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use crate::replay::diff::compare::Comparison;
use crate::replay::diff::decode::DecodedResponse;
use crate::replay::diff::summary::DiffSummary;
pub use diff_line::{DiffLine, diff_line};
use per_endpoint::EndpointTally;
pub use per_endpoint::{MAX_EXAMPLES, MAX_FIELDS, MAX_SIGNATURES};

/// Endpoints counted separately; requests of later endpoints fold into "(other endpoints)".
pub const MAX_ENDPOINTS: usize = 200;
/// The entry that endpoints beyond `MAX_ENDPOINTS` fold into.
pub const OTHER_ENDPOINTS: &str = "(other endpoints)";
/// Distinct folded endpoint names remembered to count them; beyond this, `endpoints_folded`
/// is a lower bound.
const MAX_FOLDED_NAMES: usize = 65_536;

/// One replayed request, as the engine saw it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// The endpoint name (see `EndpointNamer`).
    pub endpoint: &'a str,
    /// The recorded request's id.
    pub request_id: u64,
    /// "GET /x?y".
    pub request: &'a str,
    /// How long the recorded response took, when known.
    pub recorded_latency: Option<Duration>,
    /// None when the replayed request failed.
    pub replayed_latency: Option<Duration>,
    /// Whether and how it was compared.
    pub outcome: Outcome<'a>,
}

/// What came of one replayed request.
#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// The candidate gave no response.
    Failed,
    /// No recorded response to compare with.
    NotCompared,
    /// Both responses, and how the candidate (and the baseline, if any) differ from the
    /// recording.
    Compared {
        recorded: &'a DecodedResponse,
        replayed: &'a DecodedResponse,
        candidate: &'a Comparison,
        /// Some with a baseline target.
        baseline: Option<Baseline<'a>>,
    },
}

/// What the baseline target answered to the same request.
#[derive(Clone, Copy, Debug)]
pub enum Baseline<'a> {
    /// The baseline's response compared with the recording.
    Compared(&'a Comparison),
    /// The baseline gave no response: this request learns no noise.
    Failed,
}

/// The running diff of a replay.
#[derive(Default)]
pub struct DiffTally {
    baseline: bool,
    index: HashMap<String, usize>,
    endpoints: Vec<EndpointTally>,
    other: Option<EndpointTally>,
    folded_names: HashSet<u64>,
    baseline_failed: u64,
}

impl DiffTally {
    /// An empty tally; `baseline`: a baseline target is replayed too, so noise is learned.
    pub fn new(baseline: bool) -> Self {
        Self {
            baseline,
            ..Self::default()
        }
    }

    /// Counts one request.
    pub fn observe(&mut self, o: Observation<'_>) {
        if let Outcome::Compared {
            baseline: Some(Baseline::Failed),
            ..
        } = o.outcome
        {
            self.baseline_failed += 1;
        }
        let tally = self.endpoint_mut(o.endpoint);
        tally.requests += 1;
        tally.record_latency(o.recorded_latency, o.replayed_latency);
        match o.outcome {
            Outcome::Failed => tally.failed += 1,
            Outcome::NotCompared => tally.not_compared += 1,
            Outcome::Compared {
                recorded,
                replayed,
                candidate,
                baseline,
            } => {
                let baseline = match baseline {
                    Some(Baseline::Compared(b)) => Some(b),
                    _ => None,
                };
                tally.observe_compared(
                    o.request_id,
                    o.request,
                    (recorded, replayed),
                    candidate,
                    baseline,
                );
            }
        }
    }

    /// The endpoint's tally, or the fold-in entry once `MAX_ENDPOINTS` are counted.
    fn endpoint_mut(&mut self, name: &str) -> &mut EndpointTally {
        let slot = match self.index.get(name) {
            Some(&i) => Some(i),
            None if self.endpoints.len() < MAX_ENDPOINTS => {
                self.index.insert(name.to_string(), self.endpoints.len());
                self.endpoints.push(EndpointTally::new(name));
                Some(self.endpoints.len() - 1)
            }
            None => {
                if self.folded_names.len() < MAX_FOLDED_NAMES {
                    let mut hasher = DefaultHasher::new();
                    name.hash(&mut hasher);
                    self.folded_names.insert(hasher.finish());
                }
                None
            }
        };
        match slot.and_then(|i| self.endpoints.get_mut(i)) {
            Some(tally) => tally,
            None => self
                .other
                .get_or_insert_with(|| EndpointTally::new(OTHER_ENDPOINTS)),
        }
    }

    /// Requests classified on arrival because their endpoint's signature cap was reached:
    /// their counts use their own baseline's differences as noise, not the final noise sets.
    pub fn approximate_classifications(&self) -> u64 {
        self.all().map(|e| e.approximate_requests).sum()
    }

    fn all(&self) -> impl Iterator<Item = &EndpointTally> {
        self.endpoints.iter().chain(self.other.as_ref())
    }

    /// The summary so far, under the noise learned so far (final once the replay is over).
    pub fn summary(&self) -> DiffSummary {
        let mut endpoints: Vec<_> = self.all().map(|e| e.summary(None, self.baseline)).collect();
        endpoints.sort_by(|a, b| {
            (b.different > 0)
                .cmp(&(a.different > 0))
                .then(b.different.cmp(&a.different))
                .then(b.requests.cmp(&a.requests))
                .then_with(|| a.endpoint.cmp(&b.endpoint))
        });
        DiffSummary {
            baseline: self.baseline,
            requests: endpoints.iter().map(|e| e.requests).sum(),
            identical: endpoints.iter().map(|e| e.identical).sum(),
            different: endpoints.iter().map(|e| e.different).sum(),
            failed: endpoints.iter().map(|e| e.failed).sum(),
            not_compared: endpoints.iter().map(|e| e.not_compared).sum(),
            baseline_failed: self.baseline_failed,
            endpoints,
            endpoints_folded: u64::try_from(self.folded_names.len()).unwrap_or(u64::MAX),
        }
    }

    /// `DiffSummary::to_text`, plus a note when some requests were classified on arrival
    /// (the summary's shape has no field for it).
    pub fn to_text(&self) -> String {
        let mut text = self.summary().to_text();
        let approximate = self.approximate_classifications();
        if approximate > 0 {
            text.push_str(&format!(
                "{approximate} requests classified on arrival (over {MAX_SIGNATURES} difference \
                 patterns on their endpoint): their counts are approximate\n"
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::diff::compare::{DiffRules, compare};
    use crate::replay::diff::summary::{DiffKind, FieldClass};

    /// A decoded response with `body` (shared with `diff_line`'s tests).
    pub(super) fn response(status: u16, body: &str) -> DecodedResponse {
        DecodedResponse {
            status,
            body: body.as_bytes().to_vec(),
            ..DecodedResponse::default()
        }
    }

    /// Observes one request on `endpoint`: the recorded, candidate and (optional) baseline
    /// responses as (status, body).
    fn observe(
        t: &mut DiffTally,
        endpoint: &str,
        id: u64,
        rec: (u16, &str),
        cand: (u16, &str),
        base: Option<(u16, &str)>,
    ) {
        let rules = DiffRules::default();
        let recorded = response(rec.0, rec.1);
        let replayed = response(cand.0, cand.1);
        let candidate = compare(&recorded, &replayed, &rules);
        let baseline = base.map(|b| compare(&recorded, &response(b.0, b.1), &rules));
        t.observe(Observation {
            endpoint,
            request_id: id,
            request: "GET /x",
            recorded_latency: Some(Duration::from_millis(10)),
            replayed_latency: Some(Duration::from_millis(20)),
            outcome: Outcome::Compared {
                recorded: &recorded,
                replayed: &replayed,
                candidate: &candidate,
                baseline: baseline.as_ref().map(Baseline::Compared),
            },
        });
    }

    fn names(fields: &[crate::replay::diff::summary::FieldSummary]) -> Vec<&str> {
        fields.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn noise_from_baseline_and_real_regressions() {
        let mut t = DiffTally::new(true);
        for i in 0..10u64 {
            let rec = r#"{"ts":1,"rid":"a","price":5}"#;
            let cand = format!(
                r#"{{"ts":{},"rid":"c{i}","price":{}}}"#,
                i + 2,
                if i < 4 { 6 } else { 5 }
            );
            let base = format!(r#"{{"ts":{},"rid":"b{i}","price":5}}"#, i + 3);
            observe(
                &mut t,
                "GET /p",
                i,
                (200, rec),
                (200, &cand),
                Some((200, &base)),
            );
        }
        let s = t.summary();
        let e = &s.endpoints[0];
        assert_eq!(
            (e.requests, e.identical, e.different, e.different_body),
            (10, 6, 4, 4)
        );
        assert_eq!(names(&e.fields), ["json:$.price"]);
        assert_eq!(e.fields[0].example_ids, [0, 1, 2]);
        assert_eq!(names(&e.noise), ["json:$.rid", "json:$.ts"]);
        assert_eq!((e.noise[0].candidate, e.noise[0].baseline), (10, 10));
        assert_eq!((s.identical, s.different), (6, 4));
        let ex = &e.examples[0];
        assert_eq!(ex.request_id, 0);
        assert!(
            ex.differences
                .iter()
                .any(|d| d.field == "json:$.price" && !d.noise)
        );
        assert!(
            ex.differences
                .iter()
                .any(|d| d.field == "json:$.ts" && d.noise)
        );
    }

    #[test]
    fn late_noise_reclassifies_earlier_requests() {
        let mut t = DiffTally::new(true);
        // First the baseline agrees with the recording, so `ts` looks like a regression...
        for i in 0..5 {
            observe(
                &mut t,
                "GET /t",
                i,
                (200, r#"{"ts":1}"#),
                (200, r#"{"ts":2}"#),
                Some((200, r#"{"ts":1}"#)),
            );
        }
        assert_eq!(t.summary().endpoints[0].different, 5);
        // ...then it differs as often as the candidate: `ts` is noise for all 25 requests.
        for i in 5..25 {
            observe(
                &mut t,
                "GET /t",
                i,
                (200, r#"{"ts":1}"#),
                (200, r#"{"ts":2}"#),
                Some((200, r#"{"ts":3}"#)),
            );
        }
        let e = &t.summary().endpoints[0];
        assert_eq!((e.identical, e.different), (25, 0));
        assert!(e.fields.is_empty());
        assert_eq!((e.noise[0].candidate, e.noise[0].baseline), (25, 20));
        // The example kept for `ts` is all noise now: left out.
        assert!(e.examples.is_empty());
    }

    #[test]
    fn without_baseline_nothing_is_noise() {
        let mut t = DiffTally::new(false);
        observe(
            &mut t,
            "GET /t",
            1,
            (200, r#"{"ts":1}"#),
            (500, r#"{"ts":2}"#),
            None,
        );
        observe(
            &mut t,
            "GET /t",
            2,
            (200, r#"{"ts":1}"#),
            (200, r#"{"ts":1}"#),
            None,
        );
        let s = t.summary();
        let e = &s.endpoints[0];
        assert_eq!(
            (
                e.identical,
                e.different,
                e.different_status,
                e.different_body
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(e.different_headers, 0);
        assert!(e.noise.is_empty());
        assert_eq!(names(&e.fields), ["json:$.ts", "status"]);
        assert_eq!(e.fields[1].class, FieldClass::Status);
    }

    #[test]
    fn failures_latency_and_baseline_failures_are_counted() {
        let mut t = DiffTally::new(true);
        let r = response(200, "ok");
        let c = compare(&r, &r, &DiffRules::default());
        let mut o = Observation {
            endpoint: "GET /a",
            request_id: 1,
            request: "GET /a",
            recorded_latency: Some(Duration::from_millis(4)),
            replayed_latency: None,
            outcome: Outcome::Failed,
        };
        t.observe(o);
        o.outcome = Outcome::NotCompared;
        t.observe(o);
        o.replayed_latency = Some(Duration::from_millis(8));
        o.outcome = Outcome::Compared {
            recorded: &r,
            replayed: &r,
            candidate: &c,
            baseline: Some(Baseline::Failed),
        };
        t.observe(o);
        let s = t.summary();
        assert_eq!(
            (
                s.requests,
                s.failed,
                s.not_compared,
                s.identical,
                s.baseline_failed
            ),
            (3, 1, 1, 1, 1)
        );
        let l = s.endpoints[0].latency;
        // Two significant digits: within 1%.
        let near = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < want / 100.0);
        assert!(
            near(l.recorded_p50_ms, 4.0) && near(l.replayed_p99_ms, 8.0),
            "{l:?}"
        );
        assert_eq!(l.replayed_p50_ms, l.replayed_p99_ms);
        assert!(diff_line(&o).is_none());
    }

    #[test]
    fn endpoints_beyond_the_cap_fold() {
        let mut t = DiffTally::new(false);
        for i in 0..(MAX_ENDPOINTS as u64 + 5) {
            let name = format!("GET /e{i}");
            observe(&mut t, &name, i, (200, "a"), (200, "a"), None);
            observe(&mut t, &name, i, (200, "a"), (200, "a"), None);
        }
        let s = t.summary();
        assert_eq!(s.endpoints.len(), MAX_ENDPOINTS + 1);
        assert_eq!(s.endpoints_folded, 5);
        let other = s
            .endpoints
            .iter()
            .find(|e| e.endpoint == OTHER_ENDPOINTS)
            .unwrap();
        assert_eq!(other.requests, 10);
        assert_eq!(s.requests, 2 * (MAX_ENDPOINTS as u64 + 5));
    }

    #[test]
    fn fields_beyond_the_cap_fold() {
        let mut t = DiffTally::new(false);
        for i in 0..300u64 {
            observe(
                &mut t,
                "GET /f",
                i,
                (200, r#"{"a":1}"#),
                (200, &format!(r#"{{"a":1,"f{i}":1}}"#)),
                None,
            );
        }
        let e = &t.summary().endpoints[0];
        assert_eq!(e.fields.len(), 10);
        assert_eq!(e.fields[0].field, "(other fields)");
        assert_eq!(e.fields[0].candidate, 300 - MAX_FIELDS as u64);
        assert_eq!(e.different, 300);
    }

    #[test]
    fn signatures_beyond_the_cap_are_classified_on_arrival() {
        let mut t = DiffTally::new(true);
        let n = MAX_SIGNATURES as u64 + 40;
        for i in 1..=n {
            // The bits of i pick the fields: a new signature each time.
            let fields: Vec<String> = (0..10)
                .filter(|b| i >> b & 1 == 1)
                .map(|b| format!(r#""f{b}":1"#))
                .collect();
            let cand = format!("{{{}}}", fields.join(","));
            // The baseline differs on f0 only: noise on arrival for odd requests.
            let base = if i & 1 == 1 { r#"{"f0":1}"# } else { "{}" };
            observe(
                &mut t,
                "GET /s",
                i,
                (200, "{}"),
                (200, &cand),
                Some((200, base)),
            );
        }
        assert_eq!(t.approximate_classifications(), 40);
        let e = &t.summary().endpoints[0];
        assert_eq!(e.identical + e.different, n);
        assert!(t.to_text().contains("40 requests classified on arrival"));
        // f0 differs on the baseline as often as on the candidate: noise. Only request 1
        // (f0 alone) is identical; the others have another field.
        assert_eq!((e.identical, e.different), (1, n - 1));
        assert_eq!(e.noise[0].field, "json:$.f0");
    }

    #[test]
    fn examples_cover_new_fields_and_stay_bounded() {
        let mut t = DiffTally::new(false);
        let bodies = [r#"{"a":2}"#, r#"{"a":3}"#, r#"{"b":1}"#, r#"{"a":2,"b":2}"#];
        for (i, body) in bodies.iter().enumerate() {
            observe(
                &mut t,
                "GET /x",
                i as u64,
                (200, r#"{}"#),
                (200, body),
                None,
            );
        }
        for i in 0..20u64 {
            observe(
                &mut t,
                "GET /x",
                10 + i,
                (200, "{}"),
                (200, &format!(r#"{{"k{i}":1}}"#)),
                None,
            );
        }
        let e = &t.summary().endpoints[0];
        let ids: Vec<u64> = e.examples.iter().map(|x| x.request_id).collect();
        assert_eq!(ids, [0, 2, 10, 11, 12]);
        assert_eq!(e.examples[0].replayed_body, "{\n  \"a\": 2\n}");
        assert_eq!(e.examples[0].differences[0].kind, DiffKind::Added);
    }

    #[test]
    fn examples_that_turn_into_noise_are_replaced() {
        let mut t = DiffTally::new(true);
        for i in 0..MAX_EXAMPLES as u64 {
            let cand = format!(r#"{{"n{i}":1}}"#);
            observe(
                &mut t,
                "GET /x",
                i,
                (200, "{}"),
                (200, &cand),
                Some((200, "{}")),
            );
            observe(
                &mut t,
                "GET /x",
                100 + i,
                (200, "{}"),
                (200, &cand),
                Some((200, &cand)),
            );
        }
        observe(
            &mut t,
            "GET /x",
            50,
            (200, "{}"),
            (200, r#"{"real":1}"#),
            Some((200, "{}")),
        );
        let e = &t.summary().endpoints[0];
        let ids: Vec<u64> = e.examples.iter().map(|x| x.request_id).collect();
        assert_eq!(ids, [50]);
        assert_eq!(names(&e.fields), ["json:$.real"]);
        assert_eq!(e.noise.len(), MAX_EXAMPLES);
    }

    #[test]
    fn endpoints_sort_by_differences_then_requests_then_name() {
        let mut t = DiffTally::new(false);
        for (name, n, diff) in [
            ("GET /b", 3, 0),
            ("GET /a", 3, 0),
            ("GET /c", 5, 0),
            ("GET /d", 1, 1),
            ("GET /e", 2, 2),
        ] {
            for i in 0..n {
                let body = if i < diff { "x" } else { "a" };
                observe(&mut t, name, i, (200, "a"), (200, body), None);
            }
        }
        let order: Vec<String> = t
            .summary()
            .endpoints
            .into_iter()
            .map(|e| e.endpoint)
            .collect();
        assert_eq!(order, ["GET /e", "GET /d", "GET /c", "GET /a", "GET /b"]);
    }
}
