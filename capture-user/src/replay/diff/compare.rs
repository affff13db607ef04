//! Compares a replayed response with the recorded one, field by field: the status, each header
//! by name, and the body as a JSON structure when both sides are JSON, else as bytes. Fields
//! that always change between two runs of the same code (dates, request ids, framing) are
//! skipped by default so that a diff shows behaviour, not the clock.

mod json;
pub use json::push_key;
mod rules;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::replay::diff::decode::DecodedResponse;
use crate::replay::diff::summary::{DiffKind, Difference, FieldClass};
pub use rules::{DEFAULT_NOISE_HEADERS, DiffRules, RuleError};

/// Differences kept per response; a response that differs everywhere stays small.
pub const MAX_DIFFERENCES: usize = 50;

/// Rendered values (JSON text, header values, excerpts) are cut to this many characters.
pub(crate) const MAX_VALUE_CHARS: usize = 120;

/// Body excerpts start this many bytes before the first differing byte...
const EXCERPT_BEFORE: usize = 16;
/// ...and span this many bytes.
const EXCERPT_LEN: usize = 48;

/// The differences of one response, bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// At most `MAX_DIFFERENCES`, in order: status, headers by name, body in document order.
    pub differences: Vec<Difference>,
    /// Differences found beyond the first `MAX_DIFFERENCES`.
    pub omitted: usize,
}

impl Comparison {
    fn push(&mut self, difference: Difference) {
        if self.differences.len() < MAX_DIFFERENCES {
            self.differences.push(difference);
        } else {
            self.omitted += 1;
        }
    }

    pub(crate) fn add(&mut self, field: String, class: FieldClass, kind: DiffKind, values: Values) {
        self.push(Difference {
            field,
            class,
            kind,
            recorded: values.0,
            replayed: values.1,
            offset: None,
            noise: false,
        });
    }
}

/// Rendered (recorded, replayed) values.
pub(crate) type Values = (Option<String>, Option<String>);

/// Compares `replayed` with `recorded` under `rules`.
pub fn compare(
    recorded: &DecodedResponse,
    replayed: &DecodedResponse,
    rules: &DiffRules,
) -> Comparison {
    let mut out = Comparison::default();
    if recorded.status != replayed.status {
        let values = (
            Some(recorded.status.to_string()),
            Some(replayed.status.to_string()),
        );
        out.add(
            "status".into(),
            FieldClass::Status,
            DiffKind::Changed,
            values,
        );
    }
    compare_headers(recorded, replayed, rules, &mut out);
    compare_bodies(recorded, replayed, rules, &mut out);
    out
}

/// Lowercase name → values joined with ", ", for the headers not ignored.
fn header_map(response: &DecodedResponse, rules: &DiffRules) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &response.headers {
        let name = name.to_ascii_lowercase();
        if rules.header_ignored(&name) {
            continue;
        }
        let value = if name == "set-cookie" {
            value.split('=').next().unwrap_or_default().trim()
        } else {
            value.as_str()
        };
        map.entry(name)
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    map
}

fn compare_headers(
    recorded: &DecodedResponse,
    replayed: &DecodedResponse,
    rules: &DiffRules,
    out: &mut Comparison,
) {
    let mut old = header_map(recorded, rules);
    let mut new = header_map(replayed, rules);
    let encoding =
        |m: &BTreeMap<String, String>| m.get("content-encoding").map(|v| v.to_ascii_lowercase());
    if recorded.body != replayed.body || encoding(&old) != encoding(&new) {
        old.remove("content-length");
        new.remove("content-length");
    }
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let (before, after) = (old.get(name), new.get(name));
        let kind = match (before, after) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(_), Some(_)) => DiffKind::Changed,
            (None, _) => DiffKind::Added,
            (_, None) => DiffKind::Removed,
        };
        let values = (
            before.map(|v| cut_chars(v, MAX_VALUE_CHARS)),
            after.map(|v| cut_chars(v, MAX_VALUE_CHARS)),
        );
        out.add(format!("header:{name}"), FieldClass::Header, kind, values);
    }
}

fn compare_bodies(
    recorded: &DecodedResponse,
    replayed: &DecodedResponse,
    rules: &DiffRules,
    out: &mut Comparison,
) {
    let (old, new) = (&recorded.body, &replayed.body);
    if old == new {
        return;
    }
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
    match (parse(old), parse(new)) {
        (Some(a), Some(b)) => json::diff_json(&a, &b, &mut Vec::new(), rules, out),
        (Some(_), None) | (None, Some(_)) if !rules.path_ignored(&[]) => {
            let values = (Some(body_excerpt(old, 0)), Some(body_excerpt(new, 0)));
            out.add(
                "json:$".into(),
                FieldClass::Body,
                DiffKind::TypeChanged,
                values,
            );
        }
        (Some(_), None) | (None, Some(_)) => {}
        (None, None) => diff_bytes(old, new, out),
    }
}

fn diff_bytes(old: &[u8], new: &[u8], out: &mut Comparison) {
    let offset = old
        .iter()
        .zip(new)
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| old.len().min(new.len()));
    out.push(Difference {
        field: "body".into(),
        class: FieldClass::Body,
        kind: DiffKind::Changed,
        recorded: Some(body_excerpt(old, offset)),
        replayed: Some(body_excerpt(new, offset)),
        offset: Some(u64::try_from(offset).unwrap_or(u64::MAX)),
        noise: false,
    });
}

/// A short excerpt of `body` starting a little before `offset`: text, or hex when binary.
fn body_excerpt(body: &[u8], offset: usize) -> String {
    let start = offset.saturating_sub(EXCERPT_BEFORE).min(body.len());
    let end = start.saturating_add(EXCERPT_LEN).min(body.len());
    let bytes = body.get(start..end).unwrap_or_default();
    if looks_binary(bytes) {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    } else {
        String::from_utf8_lossy(bytes).escape_debug().to_string()
    }
}

/// Bytes are shown as hex rather than text when they hold control characters other than
/// whitespace (a cut multi-byte character at an excerpt's edge is still text).
pub(crate) fn looks_binary(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .any(|&b| b < 0x09 || (0x0e..0x20).contains(&b) || b == 0x7f)
}

/// `s` cut to `max` characters, with "…" when cut.
pub(crate) fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", s.get(..end).unwrap_or_default()),
        None => s.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::replay::diff::decode::decode_response;
    use crate::replay::diff::decode::tests::{gzip, with_length};

    fn response(status: u16, headers: &[&str], body: &str) -> DecodedResponse {
        decode_response(&with_length(status, headers, body.as_bytes()), 1 << 20).unwrap()
    }

    pub(crate) fn fields(c: &Comparison) -> Vec<(&str, DiffKind)> {
        c.differences
            .iter()
            .map(|d| (d.field.as_str(), d.kind))
            .collect()
    }

    /// Compares two 200 responses with these bodies under `ignore` rules.
    pub(crate) fn diff(old: &str, new: &str, ignore: &[&str]) -> Comparison {
        let ignore: Vec<String> = ignore.iter().map(|s| s.to_string()).collect();
        let rules = DiffRules::new(&[], &ignore).unwrap();
        compare(&response(200, &[], old), &response(200, &[], new), &rules)
    }

    #[test]
    fn identical_responses_have_no_differences() {
        let r = response(200, &["Content-Type: text/plain"], "hello");
        assert_eq!(
            compare(&r, &r, &DiffRules::default()),
            Comparison::default()
        );
    }

    #[test]
    fn gzip_body_equals_its_plain_version() {
        let body = r#"{"a":1}"#;
        let plain = response(200, &[], body);
        let zipped = decode_response(
            &with_length(200, &["Content-Encoding: gzip"], &gzip(body.as_bytes())),
            1 << 20,
        )
        .unwrap();
        let c = compare(&plain, &zipped, &DiffRules::default());
        // Only the encoding header differs; content-length is left out as encodings differ.
        assert_eq!(fields(&c), [("header:content-encoding", DiffKind::Added)]);
    }

    #[test]
    fn status_then_headers_sorted_then_body() {
        let old = response(200, &["X-B: 1", "X-A: 1", "X-Gone: 1"], r#"{"a":1}"#);
        let new = response(500, &["X-A: 2", "X-B: 1", "X-New: 1"], r#"{"a":2}"#);
        let c = compare(&old, &new, &DiffRules::default());
        assert_eq!(
            fields(&c),
            [
                ("status", DiffKind::Changed),
                ("header:x-a", DiffKind::Changed),
                ("header:x-gone", DiffKind::Removed),
                ("header:x-new", DiffKind::Added),
                ("json:$.a", DiffKind::Changed),
            ]
        );
        assert_eq!(c.differences[0].recorded.as_deref(), Some("200"));
        assert_eq!(c.differences[0].class, FieldClass::Status);
        assert_eq!(c.differences[1].replayed.as_deref(), Some("2"));
    }

    #[test]
    fn repeated_headers_join_in_order() {
        let old = response(200, &["Vary: a", "vary: b"], "");
        let new = response(200, &["Vary: b", "Vary: a"], "");
        let c = compare(&old, &new, &DiffRules::default());
        assert_eq!(c.differences[0].recorded.as_deref(), Some("a, b"));
        assert_eq!(c.differences[0].replayed.as_deref(), Some("b, a"));
    }

    #[test]
    fn default_noise_headers_are_ignored() {
        let old = response(
            200,
            &[
                "Date: Mon",
                "ETag: 1",
                "X-Request-Id: a",
                "Traceparent: 1",
                "Connection: close",
            ],
            "",
        );
        let new = response(
            200,
            &["Date: Tue", "ETag: 2", "X-Request-Id: b", "Keep-Alive: 5"],
            "",
        );
        assert!(
            compare(&old, &new, &DiffRules::default())
                .differences
                .is_empty()
        );
    }

    #[test]
    fn set_cookie_compares_names_only() {
        let old = response(
            200,
            &["Set-Cookie: sid=abc; Path=/", "Set-Cookie: theme=dark"],
            "",
        );
        let same_names = response(
            200,
            &["Set-Cookie: sid=xyz; Path=/", "Set-Cookie: theme=light"],
            "",
        );
        assert!(
            compare(&old, &same_names, &DiffRules::default())
                .differences
                .is_empty()
        );
        let other = response(200, &["Set-Cookie: session=xyz"], "");
        let c = compare(&old, &other, &DiffRules::default());
        assert_eq!(fields(&c), [("header:set-cookie", DiffKind::Changed)]);
        assert_eq!(c.differences[0].recorded.as_deref(), Some("sid, theme"));
        let rules = DiffRules::new(&["Set-Cookie".into()], &[]).unwrap();
        assert!(compare(&old, &other, &rules).differences.is_empty());
    }

    #[test]
    fn content_length_compared_only_when_bodies_and_encodings_match() {
        let old = response(200, &[], "abc");
        let mut new = old.clone();
        new.headers = vec![("Content-Length".into(), "4".into())];
        let c = compare(&old, &new, &DiffRules::default());
        assert_eq!(fields(&c), [("header:content-length", DiffKind::Changed)]);
        let c = compare(&old, &response(200, &[], "abcd"), &DiffRules::default());
        assert_eq!(fields(&c), [("body", DiffKind::Changed)]);
    }

    #[test]
    fn ignore_header_rules() {
        let old = response(200, &["X-Build: 1", "X-Host: a"], "");
        let new = response(200, &["X-Build: 2", "X-Host: b"], "");
        let rules = DiffRules::new(&["x-build".into()], &["header:X-Host".into()]).unwrap();
        assert!(compare(&old, &new, &rules).differences.is_empty());
    }

    #[test]
    fn json_against_non_json_is_one_type_change() {
        let c = diff(r#"{"a":1}"#, "<html>oops</html>", &[]);
        assert_eq!(fields(&c), [("json:$", DiffKind::TypeChanged)]);
        assert_eq!(
            c.differences[0].replayed.as_deref(),
            Some("<html>oops</html>")
        );
    }

    #[test]
    fn bytes_diff_offset_and_excerpts() {
        let old = format!("{}A tail", "x".repeat(40));
        let new = format!("{}B tail", "x".repeat(40));
        let c = diff(&old, &new, &[]);
        let d = &c.differences[0];
        assert_eq!((d.field.as_str(), d.offset), ("body", Some(40)));
        assert_eq!(d.recorded.as_deref(), Some("xxxxxxxxxxxxxxxxA tail"));
        assert_eq!(diff("abc", "abcdef", &[]).differences[0].offset, Some(3));
        assert_eq!(
            diff("line\nnext", "line\nnexT", &[]).differences[0]
                .recorded
                .as_deref(),
            Some("line\\nnext")
        );
        let mut binary = response(200, &[], "");
        binary.body = vec![0, 1, 2, 0xff];
        let c = compare(&response(200, &[], "\u{1}"), &binary, &DiffRules::default());
        assert_eq!(c.differences[0].replayed.as_deref(), Some("000102ff"));
    }
}
