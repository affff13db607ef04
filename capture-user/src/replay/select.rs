//! Which recorded requests to replay (`--filter`), decided on the recorded request head.
//! Sans-IO. The head view here is shared with the rewrites (`rewrite`).

use regex::Regex;

/// Why a rule or a recorded request cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "--filter expects method=GET,POST | url=REGEX | header:NAME=REGEX (!= to negate), got {0:?}"
    )]
    BadFilter(String),
    #[error("--rewrite-url expects 'REGEX=>REPLACEMENT', got {0:?}")]
    BadUrlRewrite(String),
    #[error("--set-header expects 'Name: value' without line breaks, got {0:?}")]
    BadSetHeader(String),
    #[error("{flag}: {name:?} is not a valid header name")]
    BadHeaderName { flag: &'static str, name: String },
    #[error("--host expects HOST[:PORT] without spaces or line breaks, got {0:?}")]
    BadHost(String),
    #[error("{flag}: invalid regex {pattern:?}: {source}")]
    BadRegex {
        flag: &'static str,
        pattern: String,
        source: regex::Error,
    },
    #[error(
        "--copy-header {0}: that header frames or routes the request; number copies with another name, e.g. X-Copy"
    )]
    FramingCopyHeader(String),
    #[error("--copy-header {0}: --set-header or --drop-header names it too; keep one of them")]
    CopyHeaderRewritten(String),
    #[error("the recorded request has no complete head")]
    NoHead,
    #[error("rewriting gave a request target with a line break or space: {0:?}")]
    BadRewrittenUri(String),
}

/// A recorded request's head, borrowing the recorded bytes.
#[derive(Clone, Debug)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub uri: &'a str,
    /// Header lines as (name, value), in recorded order (obs-fold continuations included in
    /// the value as recorded).
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// Bytes up to and including the blank line.
    pub head_len: usize,
}

/// One line of the head: its bytes without the line ending, and where the line ends.
pub(super) struct Line {
    pub(super) start: usize,
    /// End of the content (before CR LF / LF).
    pub(super) end: usize,
    /// End including the line ending.
    pub(super) next: usize,
}

/// The head's lines and the length of the head (through the blank line); None when the
/// head does not end.
pub(super) fn lines(bytes: &[u8]) -> Option<(Vec<Line>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let nl = at + bytes.get(at..)?.iter().position(|&b| b == b'\n')?;
        let end = if nl > at && bytes[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        if end == at {
            // The blank line that ends the head.
            return Some((out, nl + 1));
        }
        out.push(Line {
            start: at,
            end,
            next: nl + 1,
        });
        at = nl + 1;
    }
}

/// An HTTP token (method or header name): what a rule may name.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl<'a> RequestHead<'a> {
    /// Parses the head of `request`.
    pub fn parse(request: &'a [u8]) -> Result<Self, SelectError> {
        let (lines, head_len) = lines(request).ok_or(SelectError::NoHead)?;
        let first = lines.first().ok_or(SelectError::NoHead)?;
        let request_line = std::str::from_utf8(&request[first.start..first.end])
            .map_err(|_| SelectError::NoHead)?;
        let mut parts = request_line.split_ascii_whitespace();
        let (Some(method), Some(uri)) = (parts.next(), parts.next()) else {
            return Err(SelectError::NoHead);
        };
        let mut headers: Vec<(&'a str, &'a [u8])> = Vec::new();
        let mut last_value: Option<(usize, usize)> = None; // (value start, header index)
        for line in &lines[1..] {
            let content = &request[line.start..line.end];
            if matches!(content.first(), Some(b' ' | b'\t')) {
                // obs-fold: the value goes on, as recorded.
                if let Some((value_start, i)) = last_value {
                    headers[i].1 = request[value_start..line.end].trim_ascii();
                }
                continue;
            }
            let Some(colon) = content.iter().position(|&b| b == b':') else {
                continue; // not a header line; servers differ, so it is kept but not matched
            };
            let name = std::str::from_utf8(&content[..colon]).unwrap_or("");
            let value_start = line.start + colon + 1;
            headers.push((name.trim(), request[value_start..line.end].trim_ascii()));
            last_value = Some((value_start, headers.len() - 1));
        }
        Ok(Self {
            method,
            uri,
            headers,
            head_len,
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// One `--filter` rule.
#[derive(Clone, Debug)]
pub enum FilterRule {
    /// The method is (or with `negate`, is not) one of these.
    Method { methods: Vec<String>, negate: bool },
    /// The request target matches (or does not).
    Url { regex: Regex, negate: bool },
    /// Some value of the header matches (or, negated, none does; a missing header passes).
    Header {
        name: String,
        regex: Regex,
        negate: bool,
    },
}

/// A rule's regex, with an error naming the flag it came from.
pub(super) fn regex(flag: &'static str, pattern: &str) -> Result<Regex, SelectError> {
    Regex::new(pattern).map_err(|source| SelectError::BadRegex {
        flag,
        pattern: pattern.to_string(),
        source,
    })
}

impl std::str::FromStr for FilterRule {
    type Err = SelectError;

    fn from_str(spec: &str) -> Result<Self, SelectError> {
        let bad = || SelectError::BadFilter(spec.to_string());
        let (key, value, negate) = match (spec.find("!="), spec.find('=')) {
            (Some(ne), Some(eq)) if ne < eq => (&spec[..ne], &spec[ne + 2..], true),
            (_, Some(eq)) => (&spec[..eq], &spec[eq + 1..], false),
            _ => return Err(bad()),
        };
        if key == "method" {
            let methods: Vec<String> = value
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .collect();
            if methods.iter().any(|m| !is_token(m)) {
                return Err(bad());
            }
            return Ok(Self::Method { methods, negate });
        }
        if key == "url" {
            return Ok(Self::Url {
                regex: regex("--filter", value)?,
                negate,
            });
        }
        if let Some(name) = key.strip_prefix("header:") {
            if !is_token(name) {
                return Err(SelectError::BadHeaderName {
                    flag: "--filter",
                    name: name.to_string(),
                });
            }
            return Ok(Self::Header {
                name: name.to_string(),
                regex: regex("--filter", value)?,
                negate,
            });
        }
        Err(bad())
    }
}

impl FilterRule {
    fn matches(&self, head: &RequestHead) -> bool {
        match self {
            Self::Method { methods, negate } => methods.iter().any(|m| m == head.method) != *negate,
            Self::Url { regex, negate } => regex.is_match(head.uri) != *negate,
            Self::Header {
                name,
                regex,
                negate,
            } => {
                let any = head
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .any(|(_, v)| regex.is_match(&String::from_utf8_lossy(v)));
                any != *negate
            }
        }
    }
}

/// The `--filter` rules: all must pass. None: everything passes.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    rules: Vec<FilterRule>,
}

impl Filters {
    /// All of `rules`.
    pub fn new(rules: Vec<FilterRule>) -> Self {
        Self { rules }
    }

    /// No rule: every request is replayed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Does the request pass every rule?
    pub fn matches(&self, head: &RequestHead) -> bool {
        self.rules.iter().all(|r| r.matches(head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"GET /api/v1/users/7?x=1 HTTP/1.1\r\nHost: origin\r\nUser-Agent: mobile-app/3\r\nX-Trace: a\r\nx-trace: b\r\nAccept:  */*\r\n\r\n";

    fn head(bytes: &[u8]) -> RequestHead<'_> {
        RequestHead::parse(bytes).unwrap()
    }

    fn passes(rule: &str, req: &[u8]) -> bool {
        Filters::new(vec![rule.parse().unwrap()]).matches(&head(req))
    }

    #[test]
    fn parses_heads_with_crlf_or_lf_and_folded_values() {
        let h = head(REQ);
        assert_eq!((h.method, h.uri), ("GET", "/api/v1/users/7?x=1"));
        assert_eq!(h.header("user-agent"), Some(&b"mobile-app/3"[..]));
        assert_eq!(h.header("X-TRACE"), Some(&b"a"[..]));
        assert_eq!(h.header("accept"), Some(&b"*/*"[..]));
        assert_eq!(h.head_len, REQ.len());
        let lf = b"POST /x HTTP/1.0\nA: 1\n continued\n\nbody";
        let h = head(lf);
        assert_eq!(h.header("a"), Some(&b"1\n continued"[..]));
        assert_eq!(h.head_len, lf.len() - 4);
        assert!(RequestHead::parse(b"GET / HTTP/1.1\r\nHost: x\r\n").is_err());
    }

    #[test]
    fn every_filter_form_and_its_negation() {
        assert!(passes("method=GET,POST", REQ));
        assert!(passes("method=get", REQ));
        assert!(!passes("method!=GET", REQ));
        assert!(passes("method!=OPTIONS", REQ));
        assert!(passes("url=^/api/v1/", REQ));
        assert!(!passes("url!=users", REQ));
        assert!(passes("header:user-agent=^mobile", REQ));
        assert!(!passes("header:User-Agent!=mobile", REQ));
        assert!(
            passes("header:X-Trace=^b$", REQ),
            "any value of a repeated header"
        );
        assert!(
            passes("header:X-Missing!=x", REQ),
            "a missing header passes a negation"
        );
        assert!(!passes("header:X-Missing=.*", REQ));
        assert!(passes("url=a=b|users", REQ), "'=' inside the regex");
        let both = Filters::new(vec![
            "method=GET".parse().unwrap(),
            "url=^/health".parse().unwrap(),
        ]);
        assert!(!both.matches(&head(REQ)));
        assert!(Filters::default().matches(&head(REQ)));
    }

    #[test]
    fn bad_rules_name_their_flag() {
        for spec in [
            "colour=red",
            "method",
            "method=GE T",
            "header:=x",
            "header:a b=x",
        ] {
            let e = spec.parse::<FilterRule>().unwrap_err().to_string();
            assert!(e.contains("--filter"), "{spec}: {e}");
        }
        let e = "url=(".parse::<FilterRule>().unwrap_err().to_string();
        assert!(e.contains("regex"), "{e}");
    }
}
