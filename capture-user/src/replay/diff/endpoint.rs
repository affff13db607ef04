//! Names the endpoint a request belongs to, so differences are counted per endpoint rather
//! than per URL: `GET /users/17/orders?page=2` and `GET /users/42/orders` are both
//! `GET /users/{id}/orders`. Ids are recognised by shape; `--endpoint-pattern` names the
//! endpoints the shapes get wrong.

use thiserror::Error;

/// The accepted `--endpoint-pattern` syntax, shown with every pattern error.
const PATTERN_SYNTAX: &str = "expected `[METHOD] /path`, where a segment `*` or `{name}` \
     matches one segment and a final `**` matches the rest, e.g. `GET /users/{user}/**`";

/// Segments of at least this many characters that mix letters and digits are tokens.
const MIN_TOKEN_LEN: usize = 20;

/// Hex segments of at least this many characters (with a digit) are ids.
const MIN_HEX_ID_LEN: usize = 16;

/// Why an `--endpoint-pattern` was refused.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad endpoint pattern `{pattern}`: {reason}; {PATTERN_SYNTAX}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*` or `{name}`.
    One,
    /// A final `**`: zero or more segments.
    Rest,
}

/// One `--endpoint-pattern`.
#[derive(Clone, Debug)]
struct Pattern {
    /// Uppercase; None matches any method.
    method: Option<String>,
    segments: Vec<Segment>,
    /// The path as written, which names the endpoint.
    written: String,
}

impl Pattern {
    fn parse(text: &str) -> Result<Self, PatternError> {
        let bad = |reason: &str| PatternError {
            pattern: text.to_string(),
            reason: reason.to_string(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (method, path) = match words.as_slice() {
            [path] => (None, *path),
            [method, path] => (Some(method.to_ascii_uppercase()), *path),
            _ => return Err(bad("expected an optional method and one path")),
        };
        let segments_text = path
            .strip_prefix('/')
            .ok_or_else(|| bad("the path starts with `/`"))?;
        let parts: Vec<&str> = segments_text.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            segments.push(match *part {
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(bad("`**` is only allowed as the last segment")),
                "*" => Segment::One,
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => Segment::One,
                p if p.contains(['*', '{', '}']) => {
                    return Err(bad("`*` and `{name}` must be whole segments"));
                }
                p => Segment::Literal(p.to_string()),
            });
        }
        Ok(Self {
            method,
            segments,
            written: path.to_string(),
        })
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        if self
            .method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Rest, _) => return true,
                (Segment::One, Some(_)) => {}
                (Segment::Literal(l), Some(p)) if l == p => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }
}

/// Maps requests to endpoint names: configured patterns first, then id collapsing.
#[derive(Clone, Debug, Default)]
pub struct EndpointNamer {
    patterns: Vec<Pattern>,
}

impl EndpointNamer {
    /// A namer trying `patterns` (`--endpoint-pattern`) in order before the default naming.
    pub fn new(patterns: &[String]) -> Result<Self, PatternError> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// "GET /users/{id}/orders" for `GET /users/17/orders?x=1`: the method and the path
    /// without query or fragment, either as the first matching pattern is written or with
    /// id-like segments replaced by `{id}`.
    pub fn name(&self, method: &str, uri: &str) -> String {
        let path = request_path(uri);
        if let Some(p) = self.patterns.iter().find(|p| p.matches(method, path)) {
            return format!("{method} {}", p.written);
        }
        let collapsed: Vec<&str> = path
            .split('/')
            .map(|s| if is_id(s) { "{id}" } else { s })
            .collect();
        format!("{method} {}", collapsed.join("/"))
    }
}

/// The path of a request target: no query or fragment, absolute-form reduced to its path,
/// and "/" when empty.
fn request_path(uri: &str) -> &str {
    let end = uri.find(['?', '#']).unwrap_or(uri.len());
    let target = uri.get(..end).unwrap_or_default();
    let path = match target.find("://") {
        Some(scheme_end) if !target.get(..scheme_end).unwrap_or_default().contains('/') => {
            let after = target.get(scheme_end + 3..).unwrap_or_default();
            after
                .find('/')
                .and_then(|i| after.get(i..))
                .unwrap_or_default()
        }
        _ => target,
    };
    if path.is_empty() { "/" } else { path }
}

/// Shapes of generated ids: a number, a UUID, long hex, or a long token of letters and digits.
fn is_id(segment: &str) -> bool {
    let has_digit = segment.bytes().any(|b| b.is_ascii_digit());
    let has_letter = segment.bytes().any(|b| b.is_ascii_alphabetic());
    let all_digits =
        !segment.is_empty() && !has_letter && segment.bytes().all(|b| b.is_ascii_digit());
    let long_hex = segment.len() >= MIN_HEX_ID_LEN
        && has_digit
        && segment.bytes().all(|b| b.is_ascii_hexdigit());
    let token = segment.len() >= MIN_TOKEN_LEN
        && has_digit
        && has_letter
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    all_digits || long_hex || token || is_uuid(segment)
}

fn is_uuid(segment: &str) -> bool {
    let groups: Vec<&str> = segment.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_name(method: &str, uri: &str) -> String {
        EndpointNamer::default().name(method, uri)
    }

    #[test]
    fn ids_collapse_by_shape() {
        assert_eq!(
            default_name("GET", "/users/17/orders?page=2#top"),
            "GET /users/{id}/orders"
        );
        assert_eq!(
            default_name("GET", "/o/123e4567-e89b-12d3-a456-426614174000"),
            "GET /o/{id}"
        );
        assert_eq!(
            default_name("GET", "/blob/0123456789abcdef0"),
            "GET /blob/{id}"
        );
        assert_eq!(
            default_name("GET", "/t/aZ3kL9qP0xR7tY2wB5nM1"),
            "GET /t/{id}"
        );
        assert_eq!(
            default_name("PUT", "/t/aaaa_bbbb-cccc_dddd-0"),
            "PUT /t/{id}"
        );
    }

    #[test]
    fn words_and_short_or_letter_only_segments_stay() {
        assert_eq!(
            default_name("GET", "/api/v1/deadbeefdeadbeef"),
            "GET /api/v1/deadbeefdeadbeef"
        );
        assert_eq!(default_name("GET", "/a/abc123"), "GET /a/abc123");
        assert_eq!(
            default_name("GET", "/files/2024-01-01"),
            "GET /files/2024-01-01"
        );
        assert_eq!(
            default_name("GET", "/very-long-word-without-any-digits"),
            "GET /very-long-word-without-any-digits"
        );
        assert_eq!(default_name("GET", "/users/"), "GET /users/");
    }

    #[test]
    fn absolute_form_and_empty_paths() {
        assert_eq!(
            default_name("GET", "http://example.com/users/5?x"),
            "GET /users/{id}"
        );
        assert_eq!(default_name("GET", "https://example.com"), "GET /");
        assert_eq!(default_name("GET", "http://example.com?x=1"), "GET /");
        assert_eq!(default_name("GET", ""), "GET /");
        assert_eq!(default_name("GET", "?x=1"), "GET /");
        assert_eq!(
            default_name("GET", "/redirect?to=http://x/1"),
            "GET /redirect"
        );
        assert_eq!(default_name("OPTIONS", "*"), "OPTIONS *");
    }

    #[test]
    fn patterns_match_first_and_name_as_written() {
        let patterns = [
            "GET /users/{user}/**".to_string(),
            "/api/v1/items/*".to_string(),
            "/api/v1/**".to_string(),
        ];
        let namer = EndpointNamer::new(&patterns).unwrap();
        assert_eq!(
            namer.name("GET", "/users/bob/orders/7?x"),
            "GET /users/{user}/**"
        );
        assert_eq!(namer.name("GET", "/users/bob"), "GET /users/{user}/**");
        assert_eq!(
            namer.name("POST", "/users/bob/orders/7"),
            "POST /users/bob/orders/{id}"
        );
        assert_eq!(
            namer.name("DELETE", "/api/v1/items/abc"),
            "DELETE /api/v1/items/*"
        );
        assert_eq!(
            namer.name("GET", "/api/v1/items/abc/parts"),
            "GET /api/v1/**"
        );
        assert_eq!(
            namer.name("get", "http://h/users/x"),
            "get /users/{user}/**"
        );
        assert_eq!(namer.name("GET", "/other/3"), "GET /other/{id}");
    }

    #[test]
    fn bad_patterns_name_the_pattern_and_the_syntax() {
        for bad in [
            "users/*",
            "GET /a/**/b",
            "GET POST /a",
            "",
            "/a/x*y",
            "/a/{}",
        ] {
            let err = EndpointNamer::new(&[bad.to_string()]).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&format!("`{bad}`")) && text.contains("[METHOD] /path"),
                "{text}"
            );
        }
    }
}
