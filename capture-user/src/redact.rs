//! `--redact-header NAME`: the values of the named headers are replaced with a fixed marker as
//! soon as a message is framed, before anything stores or prints it, so secrets (tokens,
//! cookies) never reach a data directory, a Kafka topic or a terminal. Replay then sends the
//! marker, unless `--set-header` gives the header a value. Sans-IO: message bytes in, bytes
//! out.
//!
//! The head's header lines are rewritten (a folded continuation of a redacted value goes
//! too); so are the trailers of an HTTP/2 message (its stored form keeps them after the
//! body). A head cut short still has its last line redacted when the name is complete. Bodies
//! are never touched.

use bytes::{Bytes, BytesMut};

use crate::message::HttpVersion;

/// What a redacted value becomes.
pub const MARKER: &str = "[redacted]";

/// A header name that is not an HTTP token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--redact-header {0:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~), e.g. --redact-header Authorization"
)]
pub struct BadHeaderName(pub String);

/// The headers to redact (names compared case-insensitively).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redaction {
    /// Lowercase, in the order given, without repeats.
    names: Vec<String>,
}

impl Redaction {
    /// Redaction of `names`; each must be a header name.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, BadHeaderName> {
        let mut lower: Vec<String> = Vec::new();
        for name in names {
            let name = name.as_ref().trim();
            if !is_token(name) {
                return Err(BadHeaderName(name.to_string()));
            }
            let name = name.to_ascii_lowercase();
            if !lower.contains(&name) {
                lower.push(name);
            }
        }
        Ok(Self { names: lower })
    }

    /// The names redacted (lowercase), for the recording's description.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `bytes` with the named headers' values replaced; None when no header matched (the
    /// bytes are kept as they are, without a copy). HTTP/2 messages are in the stored form,
    /// whose trailers follow the `body_len` body bytes.
    pub fn apply(&self, bytes: &[u8], version: HttpVersion, body_len: u64) -> Option<Bytes> {
        if self.is_empty() {
            return None;
        }
        let head_end = head_end(bytes);
        let mut out = BytesMut::new();
        let mut changed = self.lines(bytes, 0, head_end, true, &mut out);
        let trailers_at = head_end
            .saturating_add(usize::try_from(body_len).unwrap_or(usize::MAX))
            .min(bytes.len());
        if version == HttpVersion::Http2 && trailers_at < bytes.len() {
            out.extend_from_slice(&bytes[head_end..trailers_at]);
            changed |= self.lines(bytes, trailers_at, bytes.len(), false, &mut out);
        } else {
            out.extend_from_slice(&bytes[head_end..]);
        }
        changed.then(|| out.freeze())
    }

    /// Copies the lines of `bytes[from..to]` into `out`, redacting named fields (the first line
    /// is a request or status line when `start_line`); true when one was redacted.
    fn lines(
        &self,
        bytes: &[u8],
        from: usize,
        to: usize,
        start_line: bool,
        out: &mut BytesMut,
    ) -> bool {
        let mut changed = false;
        let mut at = from;
        let mut first = start_line;
        let mut in_redacted = false;
        while at < to {
            let end = bytes[at..to]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(to, |i| at + i + 1);
            let line = &bytes[at..end];
            let folded = matches!(line.first(), Some(b' ' | b'\t'));
            if first {
                out.extend_from_slice(line);
            } else if folded && in_redacted {
                // The value went on on this line: it goes with the rest.
            } else if let Some(colon) = self.named_field(line) {
                out.extend_from_slice(&line[..=colon]);
                out.extend_from_slice(b" ");
                out.extend_from_slice(MARKER.as_bytes());
                out.extend_from_slice(line_ending(line));
                in_redacted = true;
                changed = true;
            } else {
                out.extend_from_slice(line);
                in_redacted = in_redacted && folded;
            }
            first = false;
            at = end;
        }
        changed
    }

    /// The colon's position when `line` is a field of a name to redact. HTTP/2's pseudo-header
    /// lines (`:authority: x`) are never redacted.
    fn named_field(&self, line: &[u8]) -> Option<usize> {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = line[..colon].trim_ascii();
        self.names
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
            .then_some(colon)
    }
}

/// Where the head ends (after its blank line, CRLF or LF), or the end of `bytes` when it
/// does not. One pass that stops there: the body is never scanned.
fn head_end(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(i) = bytes[at..].iter().position(|&b| b == b'\n') {
        let after = at + i + 1;
        match bytes.get(after..) {
            Some([b'\n', ..]) => return after + 1,
            Some([b'\r', b'\n', ..]) => return after + 2,
            _ => at = after,
        }
    }
    bytes.len()
}

/// The line's ending as it was ("\r\n", "\n", or none for a line cut short).
fn line_ending(line: &[u8]) -> &'static [u8] {
    if line.ends_with(b"\r\n") {
        b"\r\n"
    } else if line.ends_with(b"\n") {
        b"\n"
    } else {
        b""
    }
}

/// An HTTP token (RFC 9110 section 5.6.2).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(names: &[&str], bytes: &[u8]) -> Option<String> {
        let r = Redaction::new(names).unwrap();
        r.apply(bytes, HttpVersion::Http11, 0)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn named_values_become_the_marker_and_everything_else_stays() {
        let request = b"GET /a HTTP/1.1\r\nHost: h\r\nAUTHORIZATION:Bearer s3cr3t\r\nCookie: a=1; b=2\r\nX: y\r\n\r\nbody Authorization: kept";
        let out = redact(&["authorization", "Cookie"], request).unwrap();
        assert_eq!(
            out,
            "GET /a HTTP/1.1\r\nHost: h\r\nAUTHORIZATION: [redacted]\r\nCookie: [redacted]\r\nX: y\r\n\r\nbody Authorization: kept"
        );
        assert!(
            redact(&["set-cookie"], request).is_none(),
            "nothing matched: no copy"
        );
    }

    #[test]
    fn folded_values_lf_heads_and_heads_cut_short_leave_no_secret_behind() {
        let folded = b"GET / HTTP/1.1\nAuthorization: Basic\n  c2VjcmV0\nX: y\n\n";
        assert_eq!(
            redact(&["authorization"], folded).unwrap(),
            "GET / HTTP/1.1\nAuthorization: [redacted]\nX: y\n\n"
        );
        let cut = b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sec";
        assert_eq!(
            redact(&["authorization"], cut).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\nAuthorization: [redacted]"
        );
        let response = b"HTTP/1.1 200 OK\r\nSet-Cookie: id=42\r\nSet-Cookie: t=9\r\n\r\n";
        assert_eq!(
            redact(&["set-cookie"], response).unwrap(),
            "HTTP/1.1 200 OK\r\nSet-Cookie: [redacted]\r\nSet-Cookie: [redacted]\r\n\r\n"
        );
    }

    #[test]
    fn http2_trailers_are_redacted_and_pseudo_headers_never() {
        let stored = b"POST /s HTTP/2\r\n:authority: h\r\nauthorization: t0k\r\n\r\nBODYx-token: t1k\r\nother: v\r\n\r\n";
        let r = Redaction::new(&["authorization", "x-token", "authority"]).unwrap();
        let out = r.apply(stored, HttpVersion::Http2, 4).unwrap();
        assert_eq!(
            &out[..],
            &b"POST /s HTTP/2\r\n:authority: h\r\nauthorization: [redacted]\r\n\r\nBODYx-token: [redacted]\r\nother: v\r\n\r\n"[..]
        );
        // For HTTP/1 the same bytes after the head are body: untouched.
        let out = r.apply(stored, HttpVersion::Http11, 4).unwrap();
        assert!(out.ends_with(b"BODYx-token: t1k\r\nother: v\r\n\r\n"));
    }

    #[test]
    fn names_must_be_tokens_and_repeat_once() {
        assert_eq!(
            Redaction::new(&["Bad Name"]),
            Err(BadHeaderName("Bad Name".into()))
        );
        let r = Redaction::new(&["Cookie", "cookie", "Authorization"]).unwrap();
        assert_eq!(r.names(), ["cookie", "authorization"]);
    }
}
