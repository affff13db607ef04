//! How replayed requests are altered (`--rewrite-url`, `--set-header`, `--drop-header`,
//! `--host`). Sans-IO, on the recorded bytes, over the head view of `select`.
//!
//! Byte-exact replay is the default promise: a request no rule changes is sent as recorded.
//! A rewritten request keeps every untouched header line as recorded (order, case, spacing)
//! and its body byte for byte; only the lines a rule names are rebuilt.

use std::borrow::Cow;

use regex::Regex;

use super::select::{Line, RequestHead, SelectError, is_token, lines, regex};

/// The rewrites applied to every replayed request.
#[derive(Clone, Debug, Default)]
pub struct Rewrites {
    urls: Vec<(Regex, String)>,
    /// Lower-cased name → full header line content ("Name: value").
    set: Vec<(String, String)>,
    drop: Vec<String>,
}

impl Rewrites {
    /// No rule: requests go as recorded.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty() && self.set.is_empty() && self.drop.is_empty()
    }

    /// `REGEX=>REPLACEMENT`, applied to the request target in the order given ($1 for groups).
    pub fn add_url_rewrite(&mut self, spec: &str) -> Result<(), SelectError> {
        let (pattern, replacement) = spec
            .split_once("=>")
            .ok_or_else(|| SelectError::BadUrlRewrite(spec.to_string()))?;
        if pattern.is_empty() {
            return Err(SelectError::BadUrlRewrite(spec.to_string()));
        }
        self.urls
            .push((regex("--rewrite-url", pattern)?, replacement.to_string()));
        Ok(())
    }

    /// `Name: value`: replaces every recorded header of that name, or adds it.
    pub fn add_set_header(&mut self, spec: &str) -> Result<(), SelectError> {
        let bad = || SelectError::BadSetHeader(spec.to_string());
        let (name, value) = spec.split_once(':').ok_or_else(bad)?;
        let (name, value) = (name.trim(), value.trim());
        if !is_token(name) {
            return Err(SelectError::BadHeaderName {
                flag: "--set-header",
                name: name.to_string(),
            });
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(bad());
        }
        self.set_line(name, value);
        Ok(())
    }

    fn set_line(&mut self, name: &str, value: &str) {
        let lower = name.to_ascii_lowercase();
        self.set.retain(|(n, _)| *n != lower);
        self.set.push((lower, format!("{name}: {value}")));
    }

    /// Removes every recorded header of that name.
    pub fn add_drop_header(&mut self, name: &str) -> Result<(), SelectError> {
        let name = name.trim();
        if !is_token(name) {
            return Err(SelectError::BadHeaderName {
                flag: "--drop-header",
                name: name.to_string(),
            });
        }
        self.drop.push(name.to_ascii_lowercase());
        Ok(())
    }

    /// Sets the Host header.
    pub fn set_host(&mut self, host: &str) -> Result<(), SelectError> {
        if host.is_empty()
            || host
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/' || b == b'@')
        {
            return Err(SelectError::BadHost(host.to_string()));
        }
        self.set_line("Host", host);
        Ok(())
    }

    /// The bytes to send for `request`: the recorded bytes when no rule changes anything.
    pub fn apply<'a>(&self, request: &'a [u8]) -> Result<Cow<'a, [u8]>, SelectError> {
        if self.is_empty() {
            return Ok(Cow::Borrowed(request));
        }
        let (lines, head_len) = lines(request).ok_or(SelectError::NoHead)?;
        let first = lines.first().ok_or(SelectError::NoHead)?;
        let eol: &[u8] = &request[first.end..first.next];
        let mut out = Vec::with_capacity(request.len() + 64);
        let mut changed = self.request_line(request, first, &mut out)?;
        out.extend_from_slice(eol);
        changed |= self.header_lines(request, &lines[1..], eol, &mut out);
        if !changed {
            return Ok(Cow::Borrowed(request));
        }
        // The blank line as recorded, then the body untouched.
        out.extend_from_slice(&request[lines.last().map_or(first.next, |l| l.next)..head_len]);
        out.extend_from_slice(&request[head_len..]);
        Ok(Cow::Owned(out))
    }

    /// Writes the request line (METHOD SP URI SP VERSION) with only the URI rewritten;
    /// true when the URI changed.
    fn request_line(
        &self,
        request: &[u8],
        first: &Line,
        out: &mut Vec<u8>,
    ) -> Result<bool, SelectError> {
        let line = &request[first.start..first.end];
        let line_str = std::str::from_utf8(line).map_err(|_| SelectError::NoHead)?;
        let head = RequestHead::parse(request)?;
        let mut uri = Cow::Borrowed(head.uri);
        for (re, replacement) in &self.urls {
            if let Cow::Owned(new) = re.replace(&uri, replacement.as_str()) {
                uri = Cow::Owned(new);
            }
        }
        if uri == head.uri {
            out.extend_from_slice(line);
            return Ok(false);
        }
        if uri
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(SelectError::BadRewrittenUri(uri.into_owned()));
        }
        let at = line_str.find(head.uri).ok_or(SelectError::NoHead)?;
        out.extend_from_slice(&line[..at]);
        out.extend_from_slice(uri.as_bytes());
        out.extend_from_slice(&line[at + head.uri.len()..]);
        Ok(true)
    }

    /// Writes the header lines: kept as recorded unless dropped or replaced (the first of a
    /// replaced name takes the new line; later ones go), then the set lines no recorded
    /// header took. True when anything changed.
    fn header_lines(&self, request: &[u8], lines: &[Line], eol: &[u8], out: &mut Vec<u8>) -> bool {
        let mut changed = false;
        let mut placed: Vec<&str> = Vec::new();
        let mut skipping = false;
        for line in lines {
            let content = &request[line.start..line.end];
            if matches!(content.first(), Some(b' ' | b'\t')) {
                // A folded continuation goes with the line it continues.
                if !skipping {
                    out.extend_from_slice(&request[line.start..line.next]);
                }
                continue;
            }
            skipping = false;
            let name = content.iter().position(|&b| b == b':').map(|c| {
                String::from_utf8_lossy(&content[..c])
                    .trim()
                    .to_ascii_lowercase()
            });
            if let Some(name) = name {
                if self.drop.contains(&name) {
                    skipping = true;
                    changed = true;
                    continue;
                }
                if let Some((lower, new_line)) = self.set.iter().find(|(n, _)| *n == name) {
                    skipping = true;
                    if placed.contains(&lower.as_str()) {
                        changed = true;
                    } else {
                        placed.push(lower);
                        // An identical single line changes nothing.
                        changed |= new_line.as_bytes() != content;
                        out.extend_from_slice(new_line.as_bytes());
                        out.extend_from_slice(eol);
                    }
                    continue;
                }
            }
            out.extend_from_slice(&request[line.start..line.next]);
        }
        for (lower, new_line) in &self.set {
            if !placed.contains(&lower.as_str()) {
                out.extend_from_slice(new_line.as_bytes());
                out.extend_from_slice(eol);
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQ: &[u8] = b"GET /api/v1/users/7?x=1 HTTP/1.1\r\nHost: origin\r\nUser-Agent: mobile-app/3\r\nX-Trace: a\r\nx-trace: b\r\nAccept:  */*\r\n\r\n";

    #[test]
    fn bad_rewrites_name_their_flag() {
        let mut r = Rewrites::default();
        assert!(
            r.add_url_rewrite("no-arrow")
                .unwrap_err()
                .to_string()
                .contains("--rewrite-url")
        );
        assert!(r.add_url_rewrite("=>/x").is_err());
        assert!(
            r.add_set_header("NoColon")
                .unwrap_err()
                .to_string()
                .contains("--set-header")
        );
        assert!(r.add_set_header("X-Evil: a\r\nX-Injected: b").is_err());
        assert!(r.add_set_header("Bad Name: a").is_err());
        assert!(
            r.add_drop_header("a:b")
                .unwrap_err()
                .to_string()
                .contains("--drop-header")
        );
        assert!(
            r.set_host("a b")
                .unwrap_err()
                .to_string()
                .contains("--host")
        );
        assert!(r.set_host("x\r\nY: z").is_err());
        assert!(r.is_empty());
    }

    fn apply(r: &Rewrites, req: &[u8]) -> Vec<u8> {
        r.apply(req).unwrap().into_owned()
    }

    #[test]
    fn url_rewrites_chain_with_groups_and_keep_the_version_token() {
        let mut r = Rewrites::default();
        r.add_url_rewrite("^/api/v1/(.*)=>/api/v2/$1").unwrap();
        r.add_url_rewrite("users=>people").unwrap();
        let out = apply(&r, REQ);
        assert!(out.starts_with(b"GET /api/v2/people/7?x=1 HTTP/1.1\r\nHost: origin\r\n"));
        assert_eq!(&out[out.len() - 4..], b"\r\n\r\n");
        let mut r = Rewrites::default();
        r.add_url_rewrite("^/=>/v2/").unwrap();
        let out = apply(&r, b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(out, b"GET /v2/ HTTP/1.0\r\n\r\n");
        let mut r = Rewrites::default();
        r.add_url_rewrite("x=>a b").unwrap();
        assert!(
            r.apply(REQ).is_err(),
            "a space in the target would split the request line"
        );
    }

    #[test]
    fn set_replaces_in_place_or_appends_and_drop_removes_all() {
        let mut r = Rewrites::default();
        r.add_set_header("x-trace: new").unwrap();
        r.add_set_header("X-Replay: 1").unwrap();
        r.add_drop_header("accept").unwrap();
        r.set_host("replay.example:81").unwrap();
        let out = apply(&r, REQ);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /api/v1/users/7?x=1 HTTP/1.1\r\nHost: replay.example:81\r\nUser-Agent: mobile-app/3\r\nx-trace: new\r\nX-Replay: 1\r\n\r\n"
        );
        // A folded header goes with its continuation.
        let mut r = Rewrites::default();
        r.add_drop_header("a").unwrap();
        assert_eq!(
            apply(&r, b"GET / HTTP/1.1\nA: 1\n more\nB: 2\n\n"),
            b"GET / HTTP/1.1\nB: 2\n\n"
        );
    }

    #[test]
    fn no_op_rules_return_the_recorded_bytes_untouched() {
        let mut r = Rewrites::default();
        assert!(matches!(r.apply(REQ).unwrap(), Cow::Borrowed(_)));
        r.add_url_rewrite("^/nomatch=>/x").unwrap();
        r.add_drop_header("X-Absent").unwrap();
        r.set_host("origin").unwrap();
        assert!(matches!(r.apply(REQ).unwrap(), Cow::Borrowed(b) if b == REQ));
    }

    #[test]
    fn bodies_are_untouched_even_when_they_look_like_heads() {
        let mut req = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let body: &[u8] = b"5\r\n\r\n\r\nA\r\n0\r\n\r\n";
        req.extend_from_slice(body);
        let mut r = Rewrites::default();
        r.add_set_header("X-Replay: 1").unwrap();
        let out = apply(&r, &req);
        assert!(out.ends_with(body));
        assert_eq!(out.len(), req.len() + "X-Replay: 1\r\n".len());
    }

    proptest! {
        #[test]
        fn rewritten_requests_parse_and_keep_their_body(
            path in "/[a-z0-9/]{0,20}",
            headers in proptest::collection::vec(("[A-Za-z][A-Za-z-]{0,10}", "[ -~]{0,20}"), 0..6),
            body in proptest::collection::vec(any::<u8>(), 0..200),
            lf in any::<bool>(),
        ) {
            let eol = if lf { "\n" } else { "\r\n" };
            let mut req = format!("PUT {path} HTTP/1.1{eol}");
            for (n, v) in &headers {
                req.push_str(&format!("{n}: {}{eol}", v.trim()));
            }
            req.push_str(eol);
            let mut req = req.into_bytes();
            req.extend_from_slice(&body);
            prop_assert!(matches!(Rewrites::default().apply(&req).unwrap(), Cow::Borrowed(b) if b == &req[..]));
            let mut r = Rewrites::default();
            r.add_url_rewrite("^/(.*)=>/v2/$1").unwrap();
            r.add_set_header("X-Replay: yes").unwrap();
            if let Some((n, _)) = headers.first() {
                r.add_drop_header(n).unwrap();
            }
            let out = r.apply(&req).unwrap();
            let mut parsed_headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Request::new(&mut parsed_headers);
            let status = parsed.parse(&out).unwrap();
            let httparse::Status::Complete(len) = status else { panic!("incomplete head") };
            prop_assert_eq!(&out[len..], &body[..]);
            prop_assert_eq!(parsed.path.unwrap(), format!("/v2/{}", &path[1..]));
            prop_assert!(parsed.headers.iter().any(|h| h.name == "X-Replay" && h.value == b"yes"));
        }
    }
}
