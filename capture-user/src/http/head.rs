//! Reading a message head: where a message starts in a stream, the request or status line
//! and headers (with `httparse`, and leniently for requests it refuses), and what the headers
//! say about where the body ends (RFC 9112 section 6).

use std::mem::MaybeUninit;

use super::{HttpStats, scan};
use crate::message::MessageKind;
use crate::reassembly::FlowDir;

/// A request or status line and headers, copied out of the input so it can be consumed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Head {
    /// Bytes of the head, up to and including the empty line that ends it.
    pub(super) len: usize,
    pub(super) kind: MessageKind,
    pub(super) minor_version: u8,
    /// Where the body ends, as the headers say (before pairing adds what the method and
    /// status say).
    pub(super) framing: BodyFraming,
}

/// What reading a head gave.
pub(super) enum HeadParse {
    Complete(Head),
    /// The head has not ended yet.
    Partial,
    /// Not a head: the stream must resynchronise.
    Invalid(httparse::Error),
}

/// Most headers one head may have; more is counted as a head too large.
pub(super) const MAX_HEADERS: usize = 128;

/// Reads a request line and headers: the plain shape quickly (`scan`), the rest with
/// httparse, and heads httparse refuses leniently (see [`lenient_request_head`]), since
/// servers answer them and they must be recorded.
pub(super) fn request_head(buf: &[u8], stats: &mut HttpStats) -> HeadParse {
    match scan::request(buf, stats) {
        Some(head) => HeadParse::Complete(head),
        None => parsed_request_head(buf, stats),
    }
}

/// [`request_head`] by httparse (and the lenient reading).
pub(super) fn parsed_request_head(buf: &[u8], stats: &mut HttpStats) -> HeadParse {
    // Uninitialised: filling 128 empty headers first would cost more than parsing most heads.
    let mut headers = [MaybeUninit::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => {
            let method = req.method.unwrap_or("").into();
            let uri = req.path.unwrap_or("").into();
            let framing = body_framing(req.headers, stats, true);
            HeadParse::Complete(Head {
                len,
                kind: MessageKind::Request { method, uri },
                minor_version: req.version.unwrap_or(1),
                framing,
            })
        }
        Ok(httparse::Status::Partial) => HeadParse::Partial,
        Err(e) => match lenient_request_head(buf) {
            Lenient::Head { len, method, uri } => {
                stats.lenient_heads += 1;
                HeadParse::Complete(Head {
                    len,
                    kind: MessageKind::Request {
                        method: method.into(),
                        uri: uri.into(),
                    },
                    minor_version: 1,
                    framing: BodyFraming::None,
                })
            }
            Lenient::NeedMore => HeadParse::Partial,
            Lenient::NotRequest => HeadParse::Invalid(e),
        },
    }
}

/// Reads a status line and headers (the plain shape quickly, the rest with httparse); no
/// leniency, since a response httparse refuses cannot be framed reliably.
pub(super) fn response_head(buf: &[u8], stats: &mut HttpStats) -> HeadParse {
    match scan::response(buf, stats) {
        Some(head) => HeadParse::Complete(head),
        None => parsed_response_head(buf, stats),
    }
}

/// [`response_head`] by httparse.
pub(super) fn parsed_response_head(buf: &[u8], stats: &mut HttpStats) -> HeadParse {
    let mut headers = [MaybeUninit::uninit(); MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => {
            let status = resp.code.unwrap_or(0);
            let framing = body_framing(resp.headers, stats, false);
            HeadParse::Complete(Head {
                len,
                kind: MessageKind::Response { status },
                minor_version: resp.version.unwrap_or(1),
                framing,
            })
        }
        Ok(httparse::Status::Partial) => HeadParse::Partial,
        Err(e) => HeadParse::Invalid(e),
    }
}

/// Method and URI of a request head that the close cut short, read from its first line as
/// well as it goes (each empty when missing).
pub(super) fn cut_request_line(buf: &[u8]) -> (String, String) {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]).trim().to_string();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let uri = parts.next().unwrap_or_default().to_string();
    (method, uri)
}

/// Methods a request may start with when looking for the next message after a gap.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Position of the first plausible message start at a line start in `buf`.
pub(super) fn find_message_start(buf: &[u8], dir: FlowDir) -> Option<usize> {
    let starts_at = |p: usize| -> bool {
        let rest = &buf[p..];
        match dir {
            FlowDir::ToServer => METHODS.iter().any(|m| rest.starts_with(m)),
            FlowDir::ToClient => rest.starts_with(b"HTTP/1."),
        }
    };
    (0..buf.len()).find(|&p| (p == 0 || buf[p - 1] == b'\n') && starts_at(p))
}

/// What [`lenient_request_head`] found.
pub(super) enum Lenient {
    /// A head of `len` bytes with this method and URI (URI empty when missing).
    Head {
        len: usize,
        method: String,
        uri: String,
    },
    /// Looks like a request; its head has not ended yet.
    NeedMore,
    /// Not a request.
    NotRequest,
}

/// Reads request heads that httparse refuses but servers answer (a missing URI or version,
/// odd spacing), so such requests are still recorded byte-exact instead of lost. The first
/// line must start with a method-like token (upper-case letters, `_`, `-`).
pub(super) fn lenient_request_head(buf: &[u8]) -> Lenient {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let Some(method) = parts.next() else {
        return Lenient::NotRequest;
    };
    let method_like = method.len() <= 32
        && method
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-');
    if !method_like || (line_end == buf.len() && buf.len() > 64 << 10) {
        return Lenient::NotRequest;
    }
    let uri = parts.next().unwrap_or_default();
    let end = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|t| {
            buf.windows(t.len())
                .position(|w| w == *t)
                .map(|p| p + t.len())
        })
        .min();
    match end {
        Some(len) => Lenient::Head {
            len,
            method: String::from_utf8_lossy(method).into_owned(),
            uri: String::from_utf8_lossy(uri).into_owned(),
        },
        None => Lenient::NeedMore,
    }
}

/// How a message's body is delimited, from its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    Invalid,
}

/// What the Content-Length headers say, read in order until one is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ContentLength {
    Absent,
    Value(u64),
    /// A value that is not a number.
    Invalid,
    /// Two different numbers.
    Conflicting,
}

impl ContentLength {
    /// Takes one Content-Length header (a comma-separated list of values).
    pub(super) fn add(self, raw: &[u8]) -> Self {
        // Nearly always one plain number: read without splitting or UTF-8 checks.
        if (1..=19).contains(&raw.len()) && raw.iter().all(u8::is_ascii_digit) {
            let v = raw.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
            return match self {
                Self::Invalid | Self::Conflicting => self,
                Self::Value(prev) if prev != v => Self::Conflicting,
                _ => Self::Value(v),
            };
        }
        self.add_list(raw)
    }

    /// Takes one Content-Length header read as RFC 9110 allows: a list of numbers.
    pub(super) fn add_list(self, raw: &[u8]) -> Self {
        let mut state = self;
        for part in raw.split(|&b| b == b',') {
            let text = std::str::from_utf8(part).unwrap_or("").trim();
            let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                text.parse::<u64>().ok()
            } else {
                None
            };
            state = match (parsed, state) {
                (_, Self::Invalid | Self::Conflicting) => return state,
                (None, _) => Self::Invalid,
                (Some(v), Self::Value(prev)) if v != prev => Self::Conflicting,
                (Some(v), _) => Self::Value(v),
            };
        }
        state
    }
}

/// Content-Length / Transfer-Encoding rules of RFC 9112 section 6, in one pass over the
/// headers.
pub(super) fn body_framing(
    headers: &[httparse::Header<'_>],
    stats: &mut HttpStats,
    is_request: bool,
) -> BodyFraming {
    let mut te: Option<&[u8]> = None;
    let mut cl = ContentLength::Absent;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl = cl.add(h.value);
        }
    }
    framing_of(te, cl, stats, is_request)
}

/// What the last Transfer-Encoding value and the Content-Length headers say about where
/// the body ends.
pub(super) fn framing_of(
    te: Option<&[u8]>,
    cl: ContentLength,
    stats: &mut HttpStats,
    is_request: bool,
) -> BodyFraming {
    if let Some(te) = te {
        if cl != ContentLength::Absent {
            // Both: a classic request-smuggling shape. TE wins, and we say so.
            stats.ambiguous_length += 1;
        }
        let last = std::str::from_utf8(te)
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim());
        return match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => BodyFraming::Chunked,
            _ if is_request => BodyFraming::Invalid,
            _ => BodyFraming::UntilClose,
        };
    }
    match cl {
        ContentLength::Absent if is_request => BodyFraming::None,
        ContentLength::Absent => BodyFraming::UntilClose,
        ContentLength::Value(0) => BodyFraming::None,
        ContentLength::Value(n) => BodyFraming::Length(n),
        ContentLength::Invalid => BodyFraming::Invalid,
        ContentLength::Conflicting => {
            stats.ambiguous_length += 1;
            BodyFraming::Invalid
        }
    }
}
