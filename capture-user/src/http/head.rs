//! Reading a message head: where a message starts in a stream, the request or status line
//! and headers (with `httparse`, and leniently for requests it refuses), and what the headers
//! say about where the body ends (RFC 9112 section 6).

use super::HttpStats;
use crate::reassembly::FlowDir;

pub(super) const METHODS: &[&[u8]] = &[
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

/// Values of every header called `name` (case-insensitive), without allocating.
pub(super) fn header<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// How a message's body is delimited, from its headers.
pub(super) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    Invalid,
}

/// Content-Length / Transfer-Encoding rules of RFC 9112 section 6.
pub(super) fn body_framing(
    headers: &[httparse::Header<'_>],
    stats: &mut HttpStats,
    is_request: bool,
) -> BodyFraming {
    let te: Vec<&[u8]> = header(headers, "transfer-encoding").collect();
    let cl: Vec<&[u8]> = header(headers, "content-length").collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            // Both: a classic request-smuggling shape. TE wins, and we say so.
            stats.ambiguous_length += 1;
        }
        let last = te
            .last()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_ascii_lowercase());
        return match last.as_deref() {
            Some("chunked") => BodyFraming::Chunked,
            _ if is_request => BodyFraming::Invalid,
            _ => BodyFraming::UntilClose,
        };
    }
    if cl.is_empty() {
        return if is_request {
            BodyFraming::None
        } else {
            BodyFraming::UntilClose
        };
    }
    let mut value: Option<u64> = None;
    for raw in cl {
        for part in raw.split(|&b| b == b',') {
            let text = std::str::from_utf8(part).unwrap_or("").trim();
            let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                text.parse::<u64>().ok()
            } else {
                None
            };
            match (parsed, value) {
                (None, _) => return BodyFraming::Invalid,
                (Some(v), Some(prev)) if v != prev => {
                    stats.ambiguous_length += 1;
                    return BodyFraming::Invalid;
                }
                (Some(v), _) => value = Some(v),
            }
        }
    }
    match value {
        Some(0) => BodyFraming::None,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Invalid,
    }
}
