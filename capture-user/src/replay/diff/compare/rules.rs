//! What a comparison leaves out: the default noise headers, `--ignore-header` names and
//! `--ignore` rules (`header:<name>`, `json:<path>` with wildcards). Parsed once, before the
//! replay, so a typo fails at start rather than silently ignoring nothing.

use std::collections::BTreeSet;

use thiserror::Error;

/// Headers ignored by default, lowercase. They differ between any two responses of the same
/// code: `date`, `age`, `expires`, `etag`, `last-modified` (clock and build), request and trace
/// ids (`x-request-id`, `request-id`, `x-correlation-id`, `x-amzn-requestid`,
/// `x-amz-request-id`, `x-b3-traceid`, `x-b3-spanid`, `traceparent`, `tracestate`,
/// `x-trace-id`, `cf-ray`), `server-timing`, and the framing headers `transfer-encoding`,
/// `connection`, `keep-alive`. For `set-cookie` only the cookie names are compared, not their
/// values. `content-length` is compared only when the decoded bodies and the content-encodings
/// are equal (otherwise the body difference already says it).
pub const DEFAULT_NOISE_HEADERS: &[&str] = &[
    "date",
    "set-cookie",
    "etag",
    "last-modified",
    "age",
    "expires",
    "x-request-id",
    "request-id",
    "x-correlation-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "traceparent",
    "tracestate",
    "x-trace-id",
    "cf-ray",
    "server-timing",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// The accepted `--ignore` syntax, shown with every rule error.
const RULE_SYNTAX: &str = "expected `header:<name>` or `json:<path>`, where <path> is `$` \
     followed by `.key`, `['any key']`, `[3]`, `[*]` (any index) or `.*` (any key), \
     e.g. `json:$.items[*].updated_at`";

/// Why an `--ignore` rule was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad ignore rule `{rule}`: {reason}; {RULE_SYNTAX}")]
pub struct RuleError {
    /// The rule as given.
    pub rule: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One step of a JSON path rule.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PathRule {
    Key(String),
    Index(usize),
    AnyKey,
    AnyIndex,
}

/// One step of the path being compared.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// What to leave out of comparisons, from `--ignore-header` and `--ignore`: fixed before the
/// replay starts so every response is compared the same way.
#[derive(Clone, Debug, Default)]
pub struct DiffRules {
    /// Lowercase names ignored on top of `DEFAULT_NOISE_HEADERS`.
    ignored_headers: BTreeSet<String>,
    /// JSON paths ignored with everything under them.
    ignored_paths: Vec<Vec<PathRule>>,
}

impl DiffRules {
    /// Rules from header names to ignore and `header:<name>` / `json:<path>` entries.
    pub fn new(ignore_headers: &[String], ignore: &[String]) -> Result<Self, RuleError> {
        let mut rules = Self::default();
        for name in ignore_headers {
            rules
                .ignored_headers
                .insert(name.trim().to_ascii_lowercase());
        }
        for rule in ignore {
            let bad = |reason: &str| RuleError {
                rule: rule.clone(),
                reason: reason.to_string(),
            };
            if let Some(name) = rule.strip_prefix("header:") {
                let name = name.trim();
                if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ':') {
                    return Err(bad("not a header name"));
                }
                rules.ignored_headers.insert(name.to_ascii_lowercase());
            } else if let Some(path) = rule.strip_prefix("json:") {
                rules
                    .ignored_paths
                    .push(parse_path(path.trim()).map_err(bad)?);
            } else {
                return Err(bad("unknown kind"));
            }
        }
        Ok(rules)
    }

    /// The header is left out entirely (set-cookie by default keeps its cookie names).
    pub(crate) fn header_ignored(&self, name: &str) -> bool {
        self.ignored_headers.contains(name)
            || (name != "set-cookie" && DEFAULT_NOISE_HEADERS.contains(&name))
    }

    pub(crate) fn path_ignored(&self, path: &[Step<'_>]) -> bool {
        self.ignored_paths.iter().any(|rule| {
            rule.len() <= path.len()
                && rule.iter().zip(path).all(|(r, s)| match (r, s) {
                    (PathRule::AnyKey, Step::Key(_)) | (PathRule::AnyIndex, Step::Index(_)) => true,
                    (PathRule::Key(k), Step::Key(s)) => k == s,
                    (PathRule::Index(i), Step::Index(s)) => i == s,
                    _ => false,
                })
        })
    }
}

/// Parses `$.a['b c'][*].*[2]`.
fn parse_path(path: &str) -> Result<Vec<PathRule>, &'static str> {
    let mut rest = path
        .strip_prefix('$')
        .ok_or("a JSON path starts with `$`")?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let (key, tail) = after.split_at(end);
            steps.push(match key {
                "" => return Err("empty key after `.`"),
                "*" => PathRule::AnyKey,
                _ => PathRule::Key(key.to_string()),
            });
            rest = tail;
        } else if let Some(after) = rest.strip_prefix("['") {
            let (key, tail) = parse_quoted(after).ok_or("unterminated quoted key")?;
            steps.push(PathRule::Key(key));
            rest = tail;
        } else if let Some(after) = rest.strip_prefix('[') {
            let (inside, tail) = after.split_once(']').ok_or("missing `]`")?;
            steps.push(match inside {
                "*" => PathRule::AnyIndex,
                _ => PathRule::Index(inside.parse().map_err(|_| "an index is a number or `*`")?),
            });
            rest = tail;
        } else {
            return Err("expected `.` or `[`");
        }
    }
    Ok(steps)
}

/// Reads a quoted key up to `']`, with `\'` and `\\` escapes: (key, rest after `']`).
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let mut key = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => key.push(chars.next()?.1),
            '\'' => return s.get(i + 1..)?.strip_prefix(']').map(|rest| (key, rest)),
            _ => key.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_rules_name_the_rule_and_the_syntax() {
        for rule in [
            "json:items",
            "json:$.a[",
            "json:$.a[x]",
            "json:$['a",
            "json:$..a",
            "cookie:x",
            "header:",
        ] {
            let err = DiffRules::new(&[], &[rule.to_string()]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(rule) && text.contains("json:<path>"),
                "{text}"
            );
        }
        let rules = DiffRules::new(&[], &[r"json:$['it\'s'][0]".into()]).unwrap();
        assert_eq!(
            rules.ignored_paths[0],
            [PathRule::Key("it's".into()), PathRule::Index(0)]
        );
    }
}
