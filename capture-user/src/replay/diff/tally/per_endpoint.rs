//! The bounded state of one endpoint: interned fields with their counts, request signatures
//! (the set of fields a request differed on) so the final noise sets can reclassify early
//! requests, latency histograms, and a few example requests.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::replay::diff::compare::{Comparison, looks_binary};
use crate::replay::diff::decode::DecodedResponse;
use crate::replay::diff::summary::{
    Difference, EndpointSummary, Example, FieldClass, FieldSummary, LatencyPair,
};

/// Distinct fields counted per endpoint; later ones fold into "(other fields)".
pub const MAX_FIELDS: usize = 256;
/// Distinct signatures kept per endpoint; later requests are classified on arrival.
pub const MAX_SIGNATURES: usize = 512;
/// Example requests kept per endpoint.
pub const MAX_EXAMPLES: usize = 5;
/// Request ids kept per field.
const MAX_EXAMPLE_IDS: usize = 3;
/// Fields listed per endpoint summary (and noise fields).
const MAX_LISTED_FIELDS: usize = 10;
/// Example bodies are cut to this many bytes.
const MAX_SHOWN_BODY: usize = 4096;
/// The field that fields beyond `MAX_FIELDS` fold into (one per class).
const OTHER_FIELDS: &str = "(other fields)";
/// Largest latency tracked (1 hour, in µs); larger values are clamped.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Interned id of a field within one endpoint.
type FieldId = u32;

/// How often one field differed.
struct FieldStats {
    name: String,
    class: FieldClass,
    candidate: u64,
    baseline: u64,
    example_ids: Vec<u64>,
}

/// Requests counted by what they differed in.
#[derive(Clone, Copy, Debug, Default)]
struct Classes {
    identical: u64,
    different: u64,
    status: u64,
    headers: u64,
    body: u64,
}

impl Classes {
    /// Counts `n` requests whose non-noise differences are in `classes`.
    fn add(&mut self, classes: impl Iterator<Item = FieldClass>, n: u64) {
        let (mut status, mut headers, mut body) = (false, false, false);
        for class in classes {
            match class {
                FieldClass::Status => status = true,
                FieldClass::Header => headers = true,
                FieldClass::Body => body = true,
            }
        }
        if !(status || headers || body) {
            self.identical += n;
            return;
        }
        self.different += n;
        self.status += u64::from(status) * n;
        self.headers += u64::from(headers) * n;
        self.body += u64::from(body) * n;
    }
}

/// An example with the field id of each of its differences.
struct StoredExample {
    example: Example,
    ids: Vec<FieldId>,
}

/// One endpoint's counters, bounded whatever the number of requests.
pub(super) struct EndpointTally {
    name: String,
    pub(super) requests: u64,
    pub(super) failed: u64,
    pub(super) not_compared: u64,
    ids: HashMap<String, FieldId>,
    fields: Vec<FieldStats>,
    /// Fold targets per class, created when the cap is reached.
    overflow: [Option<FieldId>; 3],
    signatures: HashMap<Box<[FieldId]>, u64>,
    /// Requests beyond the signature cap, classified when they arrived.
    approximate: Classes,
    pub(super) approximate_requests: u64,
    examples: Vec<StoredExample>,
    recorded_latency: Histogram<u32>,
    replayed_latency: Histogram<u32>,
}

fn histogram() -> Histogram<u32> {
    // Two significant digits are plenty for p50/p99; the bounds are constants, so this
    // cannot fail.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 2).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u32>, latency: Option<Duration>) {
    if let Some(d) = latency {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        h.saturating_record(us.clamp(1, HISTOGRAM_MAX_US));
    }
}

fn percentile_ms(h: &Histogram<u32>, quantile: f64) -> Option<f64> {
    // hdrhistogram reports µs; its u64 → f64 conversion is exact below 2^53.
    (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1000.0)
}

fn class_index(class: FieldClass) -> usize {
    match class {
        FieldClass::Status => 0,
        FieldClass::Header => 1,
        FieldClass::Body => 2,
    }
}

/// A field is noise when the baseline differed on it at least half as often as the candidate.
fn is_noise_rule(candidate: u64, baseline: u64) -> bool {
    baseline > 0 && baseline.saturating_mul(2) >= candidate
}

impl EndpointTally {
    pub(super) fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            requests: 0,
            failed: 0,
            not_compared: 0,
            ids: HashMap::new(),
            fields: Vec::new(),
            overflow: [None; 3],
            signatures: HashMap::new(),
            approximate: Classes::default(),
            approximate_requests: 0,
            examples: Vec::new(),
            recorded_latency: histogram(),
            replayed_latency: histogram(),
        }
    }

    pub(super) fn record_latency(
        &mut self,
        recorded: Option<Duration>,
        replayed: Option<Duration>,
    ) {
        record(&mut self.recorded_latency, recorded);
        record(&mut self.replayed_latency, replayed);
    }

    /// The id of `name`, interned if there is room, else its class's "(other fields)".
    fn intern(&mut self, name: &str, class: FieldClass) -> FieldId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let next = FieldId::try_from(self.fields.len()).unwrap_or(FieldId::MAX);
        let new_field = |name: &str| FieldStats {
            name: name.to_string(),
            class,
            candidate: 0,
            baseline: 0,
            example_ids: Vec::new(),
        };
        if self.ids.len() < MAX_FIELDS {
            self.ids.insert(name.to_string(), next);
            self.fields.push(new_field(name));
            return next;
        }
        let slot = class_index(class);
        if let Some(Some(id)) = self.overflow.get(slot) {
            return *id;
        }
        self.fields.push(new_field(OTHER_FIELDS));
        if let Some(entry) = self.overflow.get_mut(slot) {
            *entry = Some(next);
        }
        next
    }

    /// Ids of the differences, one per difference (in order).
    fn intern_all(&mut self, differences: &[Difference]) -> Vec<FieldId> {
        differences
            .iter()
            .map(|d| self.intern(&d.field, d.class))
            .collect()
    }

    fn stats(&self, id: FieldId) -> Option<&FieldStats> {
        self.fields.get(usize::try_from(id).ok()?)
    }

    fn stats_mut(&mut self, id: FieldId) -> Option<&mut FieldStats> {
        self.fields.get_mut(usize::try_from(id).ok()?)
    }

    /// Noise by the counts so far (final once the replay is over).
    fn is_noise(&self, id: FieldId) -> bool {
        self.stats(id)
            .is_some_and(|s| is_noise_rule(s.candidate, s.baseline))
    }

    fn class_of(&self, id: FieldId) -> FieldClass {
        self.stats(id).map_or(FieldClass::Body, |s| s.class)
    }

    /// Counts one compared request: `baseline` holds the baseline's comparison when it
    /// answered (with a baseline target).
    pub(super) fn observe_compared(
        &mut self,
        request_id: u64,
        request: &str,
        responses: (&DecodedResponse, &DecodedResponse),
        candidate: &Comparison,
        baseline: Option<&Comparison>,
    ) {
        let candidate_ids = self.intern_all(&candidate.differences);
        let mut signature: Vec<FieldId> = candidate_ids.clone();
        signature.sort_unstable();
        signature.dedup();
        let mut own_noise: Vec<FieldId> = match baseline {
            Some(b) => self.intern_all(&b.differences),
            None => Vec::new(),
        };
        own_noise.sort_unstable();
        own_noise.dedup();
        for &id in &signature {
            if let Some(stats) = self.stats_mut(id) {
                stats.candidate += 1;
                if stats.example_ids.len() < MAX_EXAMPLE_IDS {
                    stats.example_ids.push(request_id);
                }
            }
        }
        for &id in &own_noise {
            if let Some(stats) = self.stats_mut(id) {
                stats.baseline += 1;
            }
        }
        self.consider_example(
            request_id,
            request,
            responses,
            candidate,
            &candidate_ids,
            &own_noise,
        );
        self.count_signature(signature, &own_noise);
    }

    fn count_signature(&mut self, signature: Vec<FieldId>, own_noise: &[FieldId]) {
        let signature = signature.into_boxed_slice();
        if let Some(count) = self.signatures.get_mut(&signature) {
            *count += 1;
        } else if self.signatures.len() < MAX_SIGNATURES {
            self.signatures.insert(signature, 1);
        } else {
            self.approximate_requests += 1;
            let classes: Vec<FieldClass> = signature
                .iter()
                .filter(|id| own_noise.binary_search(id).is_err())
                .map(|&id| self.class_of(id))
                .collect();
            self.approximate.add(classes.into_iter(), 1);
        }
    }

    /// Keeps the request as an example when it shows a field (not noise to its own
    /// baseline) that no kept example shows; when full, it replaces an example that turned
    /// out to be all noise.
    fn consider_example(
        &mut self,
        request_id: u64,
        request: &str,
        (recorded, replayed): (&DecodedResponse, &DecodedResponse),
        candidate: &Comparison,
        ids: &[FieldId],
        own_noise: &[FieldId],
    ) {
        let covered: BTreeSet<FieldId> = self
            .examples
            .iter()
            .flat_map(|e| e.ids.iter().copied())
            .collect();
        let shows_new = ids.iter().any(|id| {
            !covered.contains(id) && own_noise.binary_search(id).is_err() && !self.is_noise(*id)
        });
        if !shows_new {
            return;
        }
        let slot = if self.examples.len() < MAX_EXAMPLES {
            None
        } else {
            match self
                .examples
                .iter()
                .position(|e| e.ids.iter().all(|&id| self.is_noise(id)))
            {
                Some(i) => Some(i),
                None => return,
            }
        };
        let stored = StoredExample {
            example: new_example(request_id, request, recorded, replayed, candidate),
            ids: ids.to_vec(),
        };
        match slot.and_then(|i| self.examples.get_mut(i)) {
            Some(old) => *old = stored,
            None => self.examples.push(stored),
        }
    }

    /// The endpoint's summary under the final noise sets (`baseline`: noise is learned).
    pub(super) fn summary(&self, name: Option<&str>, baseline: bool) -> EndpointSummary {
        let noise: Vec<bool> = (0..self.fields.len())
            .map(|i| baseline && FieldId::try_from(i).is_ok_and(|id| self.is_noise(id)))
            .collect();
        let noisy = |id: &FieldId| {
            usize::try_from(*id)
                .ok()
                .and_then(|i| noise.get(i))
                .copied()
                .unwrap_or(false)
        };
        let mut classes = self.approximate;
        for (signature, &count) in &self.signatures {
            let kept = signature
                .iter()
                .filter(|id| !noisy(id))
                .map(|&id| self.class_of(id));
            classes.add(kept, count);
        }
        let examples = self
            .examples
            .iter()
            .filter_map(|stored| {
                let mut example = stored.example.clone();
                for (difference, id) in example.differences.iter_mut().zip(&stored.ids) {
                    difference.noise = noisy(id);
                }
                (!example.differences.iter().all(|d| d.noise)).then_some(example)
            })
            .collect();
        EndpointSummary {
            endpoint: name.unwrap_or(&self.name).to_string(),
            requests: self.requests,
            identical: classes.identical,
            different: classes.different,
            different_status: classes.status,
            different_headers: classes.headers,
            different_body: classes.body,
            failed: self.failed,
            not_compared: self.not_compared,
            latency: self.latency(),
            fields: self.field_list(&noise, false),
            noise: if baseline {
                self.field_list(&noise, true)
            } else {
                Vec::new()
            },
            examples,
        }
    }

    fn latency(&self) -> LatencyPair {
        LatencyPair {
            recorded_p50_ms: percentile_ms(&self.recorded_latency, 0.5),
            recorded_p99_ms: percentile_ms(&self.recorded_latency, 0.99),
            replayed_p50_ms: percentile_ms(&self.replayed_latency, 0.5),
            replayed_p99_ms: percentile_ms(&self.replayed_latency, 0.99),
        }
    }

    /// The candidate's fields that are (`want_noise`) or are not noise, most frequent first.
    fn field_list(&self, noise: &[bool], want_noise: bool) -> Vec<FieldSummary> {
        let mut listed: Vec<&FieldStats> = self
            .fields
            .iter()
            .zip(noise)
            .filter(|(s, n)| s.candidate > 0 && **n == want_noise)
            .map(|(s, _)| s)
            .collect();
        listed.sort_by(|a, b| {
            b.candidate
                .cmp(&a.candidate)
                .then_with(|| a.name.cmp(&b.name))
        });
        listed
            .into_iter()
            .take(MAX_LISTED_FIELDS)
            .map(|s| FieldSummary {
                field: s.name.clone(),
                class: s.class,
                candidate: s.candidate,
                baseline: s.baseline,
                example_ids: s.example_ids.clone(),
            })
            .collect()
    }
}

fn new_example(
    request_id: u64,
    request: &str,
    recorded: &DecodedResponse,
    replayed: &DecodedResponse,
    candidate: &Comparison,
) -> Example {
    let (recorded_body, recorded_cut) = render_body(&recorded.body);
    let (replayed_body, replayed_cut) = render_body(&replayed.body);
    Example {
        request_id,
        request: request.to_string(),
        recorded_status: recorded.status,
        replayed_status: replayed.status,
        differences: candidate.differences.clone(),
        recorded_body,
        replayed_body,
        bodies_cut: recorded_cut || replayed_cut || recorded.body_cut || replayed.body_cut,
    }
}

/// A body for people to read: JSON pretty-printed, text as is, binary as its size; cut at
/// `MAX_SHOWN_BODY` bytes. Returns (text, cut).
pub(super) fn render_body(body: &[u8]) -> (String, bool) {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) if looks_binary(body) => {
            return (format!("<{} bytes of binary>", body.len()), false);
        }
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    if text.len() <= MAX_SHOWN_BODY {
        return (text, false);
    }
    let end = (0..=MAX_SHOWN_BODY)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    (text.get(..end).unwrap_or_default().to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_render_for_people() {
        assert_eq!(
            render_body(br#"{"a":[1]}"#),
            ("{\n  \"a\": [\n    1\n  ]\n}".to_string(), false)
        );
        assert_eq!(
            render_body(b"plain text"),
            ("plain text".to_string(), false)
        );
        assert_eq!(
            render_body(&[0, 1, 2]),
            ("<3 bytes of binary>".to_string(), false)
        );
        let (text, cut) = render_body("é".repeat(3000).as_bytes());
        assert!(cut && text.len() == MAX_SHOWN_BODY && text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn noise_rule_needs_half_as_many_baseline_differences() {
        assert!(!is_noise_rule(10, 0));
        assert!(!is_noise_rule(10, 4));
        assert!(is_noise_rule(10, 5));
        assert!(is_noise_rule(0, 1));
    }

    #[test]
    fn latency_is_clamped_not_lost() {
        let mut h = histogram();
        record(&mut h, Some(Duration::from_secs(10_000)));
        record(&mut h, Some(Duration::ZERO));
        record(&mut h, None);
        assert_eq!(h.len(), 2);
        assert!(percentile_ms(&h, 0.99).is_some_and(|ms| ms >= 3_600_000.0));
    }
}
