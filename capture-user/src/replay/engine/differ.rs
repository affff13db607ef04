//! The engine's side of `--diff`: after each exchange, the replayed answer (and the baseline's,
//! with `--baseline`) is decoded and compared with the recorded one, counted per endpoint, and
//! written to `--diff-out` when it differs. What is kept is bounded (see `diff::tally`); each
//! response is dropped once compared.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::PreparedRequest;
use crate::replay::diff::{
    Baseline, Comparison, DecodedResponse, DiffRules, DiffSummary, DiffTally, Observation, Outcome,
    compare, decode_response, diff_line,
};
use crate::replay::response::{KEEP_RESPONSE_BYTES, ResponseOutcome};
use crate::sync::lock;

/// Decoded bodies beyond this are cut (a compressed body can expand a thousandfold).
const MAX_DECODED_BODY: usize = 4 * KEEP_RESPONSE_BYTES;

/// What to compare and where differing requests go.
#[derive(Debug)]
pub struct DiffSetup {
    pub rules: DiffRules,
    /// A baseline target runs the recorded version: noise is learned from it.
    pub baseline: bool,
    /// `--diff-out FILE.jsonl`: one line per differing request.
    pub out: Option<PathBuf>,
}

/// Why `--diff-out` cannot be written.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot create --diff-out file {path}: {source}; check the directory exists and is writable"
)]
pub struct DiffOutError {
    path: String,
    source: std::io::Error,
}

/// The lines of `--diff-out`, and the first write error (reported, never silent).
struct DiffOut {
    path: String,
    file: BufWriter<File>,
    lines: u64,
    error: Option<String>,
}

impl DiffOut {
    fn write(&mut self, line: &impl serde::Serialize) {
        if self.error.is_some() {
            return;
        }
        let written = serde_json::to_writer(&mut self.file, line)
            .map_err(std::io::Error::from)
            .and_then(|()| self.file.write_all(b"\n"));
        match written {
            Ok(()) => self.lines += 1,
            Err(e) => self.error = Some(format!("writing {} failed: {e}", self.path)),
        }
    }

    fn flush(&mut self) {
        if self.error.is_none()
            && let Err(e) = self.file.flush()
        {
            self.error = Some(format!("writing {} failed: {e}", self.path));
        }
    }
}

/// Compares answers as they come and keeps the per-endpoint summary.
pub struct Differ {
    rules: DiffRules,
    tally: Mutex<DiffTally>,
    out: Option<Mutex<DiffOut>>,
}

/// One answer, as the exchange ended.
pub type Answer<'a> = Option<&'a ResponseOutcome>;

impl Differ {
    /// Opens `--diff-out` (truncating it) before anything is sent.
    pub fn new(setup: DiffSetup) -> Result<Self, DiffOutError> {
        let out = match &setup.out {
            Some(path) => Some(Mutex::new(open_out(path)?)),
            None => None,
        };
        Ok(Self {
            rules: setup.rules,
            tally: Mutex::new(DiffTally::new(setup.baseline)),
            out,
        })
    }

    /// Compares one exchange: `candidate` is None when the request got no answer, `baseline`
    /// is None without `--baseline` and `Some(None)` when the baseline gave no answer.
    pub fn exchange_done(
        &self,
        request: &PreparedRequest,
        candidate: Answer<'_>,
        baseline: Option<Answer<'_>>,
        latency: Option<Duration>,
    ) {
        let Some(recorded) = &request.recorded else {
            return;
        };
        let decode = |bytes: &[u8]| decode_response(bytes, MAX_DECODED_BODY).ok();
        let recorded_response = recorded.response.as_deref().and_then(decode);
        let replayed = candidate.and_then(|c| decode(&c.bytes));
        let compared = match (&recorded_response, &replayed) {
            (Some(r), Some(c)) => Some((r, c, compare(r, c, &self.rules))),
            _ => None,
        };
        let baseline_compared = baseline.map(|answer| {
            let decoded = answer.and_then(|b| decode(&b.bytes));
            match (&recorded_response, decoded) {
                (Some(r), Some(b)) => Some(compare(r, &b, &self.rules)),
                _ => None,
            }
        });
        let outcome = outcome_of(candidate.is_some(), &compared, &baseline_compared);
        let observation = Observation {
            endpoint: &recorded.endpoint,
            request_id: recorded.request_id,
            request: &recorded.request_line,
            recorded_latency: recorded.latency,
            replayed_latency: latency,
            outcome,
        };
        let line = self.out.as_ref().and_then(|_| diff_line(&observation));
        lock(&self.tally).observe(observation);
        if let (Some(line), Some(out)) = (line, &self.out) {
            lock(out).write(&line);
        }
    }

    /// The summary so far (final once the replay ended).
    pub fn summary(&self) -> DiffSummary {
        lock(&self.tally).summary()
    }

    /// Flushes `--diff-out`; the lines written, or what went wrong with it.
    pub fn finish(&self) -> Option<Result<u64, String>> {
        self.out.as_ref().map(|out| {
            let mut out = lock(out);
            out.flush();
            match &out.error {
                Some(e) => Err(e.clone()),
                None => Ok(out.lines),
            }
        })
    }
}

/// What the tally is told about one exchange.
fn outcome_of<'a>(
    answered: bool,
    compared: &'a Option<(&'a DecodedResponse, &'a DecodedResponse, Comparison)>,
    baseline: &'a Option<Option<Comparison>>,
) -> Outcome<'a> {
    if !answered {
        return Outcome::Failed;
    }
    match compared {
        Some((recorded, replayed, candidate)) => Outcome::Compared {
            recorded,
            replayed,
            candidate,
            baseline: baseline.as_ref().map(|b| match b {
                Some(c) => Baseline::Compared(c),
                None => Baseline::Failed,
            }),
        },
        None => Outcome::NotCompared,
    }
}

fn open_out(path: &Path) -> Result<DiffOut, DiffOutError> {
    let file = File::create(path).map_err(|source| DiffOutError {
        path: path.display().to_string(),
        source,
    })?;
    Ok(DiffOut {
        path: path.display().to_string(),
        file: BufWriter::new(file),
        lines: 0,
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::engine::RecordedExchange;
    use bytes::Bytes;

    fn request(recorded: &'static str) -> PreparedRequest {
        PreparedRequest {
            version: crate::message::HttpVersion::Http11,
            body_len: 0,
            after_earlier_answers: false,
            bytes: Bytes::from_static(b"GET /items/7 HTTP/1.1\r\n\r\n"),
            recorded_status: Some(200),
            copy_slot: None,
            recorded: Some(Box::new(RecordedExchange {
                request_id: 7,
                request_line: "GET /items/7".into(),
                endpoint: "GET /items/{id}".into(),
                response: Some(Bytes::from_static(recorded.as_bytes())),
                latency: Some(Duration::from_millis(2)),
            })),
        }
    }

    fn answer(raw: &'static str) -> ResponseOutcome {
        ResponseOutcome {
            status: 200,
            bytes: Bytes::from_static(raw.as_bytes()),
            body_len: 0,
            keep_alive: true,
        }
    }

    const RECORDED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"p\": 10}";
    const CHANGED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"p\": 12}";

    #[test]
    fn exchanges_are_compared_counted_and_differing_ones_written_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("diff.jsonl");
        let differ = Differ::new(DiffSetup {
            rules: DiffRules::new(&[], &[]).unwrap(),
            baseline: false,
            out: Some(out.clone()),
        })
        .unwrap();
        let request = request(RECORDED);
        let latency = Some(Duration::from_millis(1));
        differ.exchange_done(&request, Some(&answer(RECORDED)), None, latency);
        differ.exchange_done(&request, Some(&answer(CHANGED)), None, latency);
        differ.exchange_done(&request, None, None, None);
        let summary = differ.summary();
        assert_eq!(
            (
                summary.requests,
                summary.identical,
                summary.different,
                summary.failed
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(summary.endpoints[0].fields[0].field, "json:$.p");
        assert_eq!(differ.finish(), Some(Ok(1)));
        let lines = std::fs::read_to_string(&out).unwrap();
        let line: serde_json::Value = serde_json::from_str(lines.trim()).unwrap();
        assert_eq!(line["endpoint"], "GET /items/{id}");
        assert_eq!(line["differences"][0]["replayed"], "12");
    }

    #[test]
    fn a_baseline_that_differs_the_same_way_makes_noise_and_an_unwritable_file_is_named() {
        let differ = Differ::new(DiffSetup {
            rules: DiffRules::new(&[], &[]).unwrap(),
            baseline: true,
            out: None,
        })
        .unwrap();
        let request = request(RECORDED);
        let changed = answer(CHANGED);
        differ.exchange_done(&request, Some(&changed), Some(Some(&changed)), None);
        let endpoint = &differ.summary().endpoints[0];
        assert_eq!((endpoint.identical, endpoint.noise.len()), (1, 1));

        let err = Differ::new(DiffSetup {
            rules: DiffRules::new(&[], &[]).unwrap(),
            baseline: false,
            out: Some("/nonexistent-dir/diff.jsonl".into()),
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("/nonexistent-dir/diff.jsonl"),
            "{err}"
        );
    }
}
