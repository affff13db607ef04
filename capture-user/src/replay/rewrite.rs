//! How replayed requests are altered (`--rewrite-url`, `--set-header`, `--drop-header`,
//! `--host`), and the copy header (`--copy-header`). Sans-IO, on the recorded bytes, over the
//! head view of `select`.
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

    /// Whether a rule sets or drops the header `name` (case-insensitive).
    pub fn names_header(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        self.set.iter().any(|(n, _)| *n == lower) || self.drop.contains(&lower)
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

/// `--copy-header NAME`: every request carries `NAME: <copy number>` (1 to N), so the target
/// or its logs can tell the copies of `--copies` apart. The line goes last in the head, so the
/// rest stays byte-exact; a recorded header of that name is dropped (`prepare`), so a request
/// carries exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyHeader {
    name: String,
}

/// Headers that frame or route a request: numbering copies with them would break the request.
const NOT_COPY_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
];

/// Where the copy header line goes in a prepared request: before the blank line that ends the
/// head, with the line ending the head uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopySlot {
    at: usize,
    crlf: bool,
}

impl CopyHeader {
    /// A header name that is a token and frames nothing.
    pub fn new(name: &str) -> Result<Self, SelectError> {
        let name = name.trim();
        if !is_token(name) {
            return Err(SelectError::BadHeaderName {
                flag: "--copy-header",
                name: name.to_string(),
            });
        }
        if NOT_COPY_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(SelectError::FramingCopyHeader(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// The header's name, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds "drop any recorded header of this name" to `rewrites`; refuses rewrites that set
    /// or drop it too (one of the two would silently lose).
    pub fn add_to(&self, rewrites: &Rewrites) -> Result<Rewrites, SelectError> {
        if rewrites.names_header(&self.name) {
            return Err(SelectError::CopyHeaderRewritten(self.name.clone()));
        }
        let mut with_drop = rewrites.clone();
        with_drop.add_drop_header(&self.name)?;
        Ok(with_drop)
    }

    /// Where the line goes in `request` (already rewritten by [`CopyHeader::add_to`]'s rules).
    pub fn slot(request: &[u8]) -> Result<CopySlot, SelectError> {
        let (lines, _) = lines(request).ok_or(SelectError::NoHead)?;
        let first = lines.first().ok_or(SelectError::NoHead)?;
        let blank_start = lines.last().map_or(first.next, |l| l.next);
        Ok(CopySlot {
            at: blank_start,
            crlf: request[first.end..first.next].starts_with(b"\r"),
        })
    }

    /// `request` with `NAME: copy_number` inserted at `slot`; the body untouched.
    pub fn tag(&self, request: &[u8], slot: CopySlot, copy_number: u32) -> Vec<u8> {
        let at = slot.at.min(request.len());
        let line = format!(
            "{}: {copy_number}{}",
            self.name,
            if slot.crlf { "\r\n" } else { "\n" }
        );
        let mut out = Vec::with_capacity(request.len() + line.len());
        out.extend_from_slice(&request[..at]);
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(&request[at..]);
        out
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

    #[test]
    fn the_copy_header_goes_last_in_the_head_once_with_the_body_untouched() {
        let header = CopyHeader::new("X-Copy").unwrap();
        let rewrites = header.add_to(&Rewrites::default()).unwrap();
        let req: &[u8] =
            b"POST /u HTTP/1.1\r\nHost: a\r\nx-copy: recorded\r\nContent-Length: 4\r\n\r\n\r\n\r\n";
        let prepared = rewrites.apply(req).unwrap();
        let slot = CopyHeader::slot(&prepared).unwrap();
        for copy in [1, 2, 30] {
            let out = header.tag(&prepared, slot, copy);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!(
                    "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nX-Copy: {copy}\r\n\r\n\r\n\r\n"
                )
            );
        }
        // Bare LF heads get a bare LF line; a head with no header lines gets one too.
        let lf: &[u8] = b"GET / HTTP/1.0\n\n";
        let slot = CopyHeader::slot(lf).unwrap();
        assert_eq!(header.tag(lf, slot, 2), b"GET / HTTP/1.0\nX-Copy: 2\n\n");
        assert!(matches!(
            CopyHeader::slot(b"GET / HTTP/1.1\r\nHost: a"),
            Err(SelectError::NoHead)
        ));
    }

    #[test]
    fn copy_header_names_that_frame_or_clash_with_rewrites_are_refused() {
        for bad in ["Bad Name", "a:b", ""] {
            let err = CopyHeader::new(bad).unwrap_err().to_string();
            assert!(err.contains("--copy-header"), "{bad}: {err}");
        }
        for framing in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
        ] {
            let err = CopyHeader::new(framing).unwrap_err().to_string();
            assert!(
                err.contains("--copy-header") && err.contains(framing),
                "{err}"
            );
        }
        let header = CopyHeader::new("X-Copy").unwrap();
        assert_eq!(header.name(), "X-Copy");
        let mut set = Rewrites::default();
        set.add_set_header("x-copy: 7").unwrap();
        let mut drop = Rewrites::default();
        drop.add_drop_header("X-COPY").unwrap();
        for rewrites in [set, drop] {
            let err = header.add_to(&rewrites).unwrap_err().to_string();
            assert!(err.contains("--copy-header X-Copy"), "{err}");
        }
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
