//! The stored form of an HTTP/2 message: an HTTP/1-like text head, the body, then the
//! trailers. It keeps every field in received order so a replay can rebuild the frames,
//! while staying readable and cheap to split.
//!
//! ```text
//! GET /path HTTP/2\r\n          (responses: HTTP/2 200\r\n)
//! :scheme: http\r\n             other pseudo-headers, received order
//! :authority: example.com\r\n
//! user-agent: x\r\n             regular fields, received order
//! \r\n
//! <body: body_len bytes, fewer if cut>
//! grpc-status: 0\r\n            only if trailers were received
//! \r\n
//! ```

/// A borrowed header field: name and value.
pub type Field<'a> = (&'a [u8], &'a [u8]);

const METHOD: &[u8] = b":method";
const PATH: &[u8] = b":path";
const AUTHORITY: &[u8] = b":authority";
const STATUS: &[u8] = b":status";
const REQUEST_SUFFIX: &[u8] = b" HTTP/2";
const RESPONSE_PREFIX: &[u8] = b"HTTP/2 ";

/// A stored message split back into its parts, for the replay side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredH2<'a> {
    /// The first line, without its CRLF.
    pub start_line: &'a [u8],
    /// Pseudo-headers: `:method` and `:path` (request) or `:status` (response) rebuilt
    /// from the start line first, then the others in received order.
    pub pseudo: Vec<Field<'a>>,
    /// Regular header fields, in received order.
    pub headers: Vec<Field<'a>>,
    /// The body as kept (shorter than `body_len` if it was cut).
    pub body: &'a [u8],
    /// Trailer fields, empty if none were received.
    pub trailers: Vec<Field<'a>>,
}

/// The first line of a stored message, taken from pseudo-headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartLine<'a> {
    Request { method: &'a [u8], uri: &'a [u8] },
    Response { status: &'a [u8] },
}

/// Splits pseudo-headers into the start line and the remaining pseudo-headers (in
/// received order). `None` if they hold neither exactly one `:method` with a target
/// (`:path`, or `:authority` for CONNECT) nor exactly one `:status` of 100..=999.
pub(crate) fn start_line<'a>(pseudo: &[Field<'a>]) -> Option<(StartLine<'a>, Vec<Field<'a>>)> {
    let single = |name: &[u8]| {
        let mut found = pseudo.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v);
        match (found.next(), found.next()) {
            (value, None) => Some(value),
            _ => None,
        }
    };
    let method = single(METHOD)?;
    let path = single(PATH)?;
    let status = single(STATUS)?;
    let (start, dropped): (StartLine<'a>, &[&[u8]]) = match (method, status) {
        (Some(method), None) => {
            let uri = match path {
                Some(path) => path,
                None if method == b"CONNECT" => single(AUTHORITY)??,
                None => return None,
            };
            if method.is_empty() || method.contains(&b' ') || uri.is_empty() {
                return None;
            }
            (StartLine::Request { method, uri }, &[METHOD, PATH])
        }
        (None, Some(status)) => {
            let three_digits = status.len() == 3 && status.iter().all(u8::is_ascii_digit);
            if !three_digits || status.first() == Some(&b'0') {
                return None;
            }
            (StartLine::Response { status }, &[STATUS])
        }
        _ => return None,
    };
    let rest = pseudo
        .iter()
        .filter(|(name, _)| !dropped.contains(name))
        .copied()
        .collect();
    Some((start, rest))
}

/// Writes the head: start line, other pseudo-headers, regular fields, blank line.
pub(crate) fn render_head(
    out: &mut Vec<u8>,
    start: StartLine<'_>,
    other_pseudo: &[Field<'_>],
    headers: &[Field<'_>],
) {
    match start {
        StartLine::Request { method, uri } => {
            out.extend_from_slice(method);
            out.push(b' ');
            out.extend_from_slice(uri);
            out.extend_from_slice(REQUEST_SUFFIX);
        }
        StartLine::Response { status } => {
            out.extend_from_slice(RESPONSE_PREFIX);
            out.extend_from_slice(status);
        }
    }
    out.extend_from_slice(b"\r\n");
    render_fields(out, other_pseudo);
    render_fields(out, headers);
    out.extend_from_slice(b"\r\n");
}

/// Writes fields, each as `name: value\r\n`, then the closing blank line.
pub(crate) fn render_trailers(out: &mut Vec<u8>, trailers: &[Field<'_>]) {
    render_fields(out, trailers);
    out.extend_from_slice(b"\r\n");
}

fn render_fields(out: &mut Vec<u8>, fields: &[Field<'_>]) {
    for (name, value) in fields {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// Renders a whole message the way the framer stores it; `None` if the pseudo-headers
/// give no start line (see the framer's rules). Used by tests and tools that build
/// stored messages without a capture.
pub fn render_stored(
    pseudo: &[Field<'_>],
    headers: &[Field<'_>],
    body: &[u8],
    trailers: Option<&[Field<'_>]>,
) -> Option<Vec<u8>> {
    let (start, other_pseudo) = start_line(pseudo)?;
    let mut out = Vec::new();
    render_head(&mut out, start, &other_pseudo, headers);
    out.extend_from_slice(body);
    if let Some(trailers) = trailers {
        render_trailers(&mut out, trailers);
    }
    Some(out)
}

/// Splits a stored message (`bytes`, `body_len` from its `FramedMessage`) into parts;
/// `None` if it is not in the stored form.
pub fn parse_stored(bytes: &[u8], body_len: u64) -> Option<StoredH2<'_>> {
    let (start_line, mut rest) = split_line(bytes)?;
    let start = parse_start_line(start_line)?;
    let mut other_pseudo = Vec::new();
    let mut headers = Vec::new();
    loop {
        let (line, after) = split_line(rest)?;
        rest = after;
        if line.is_empty() {
            break;
        }
        let field = split_field(line)?;
        if field.0.starts_with(b":") {
            other_pseudo.push(field);
        } else {
            headers.push(field);
        }
    }
    let body_end = usize::try_from(body_len).map_or(rest.len(), |len| len.min(rest.len()));
    let (body, tail) = rest.split_at(body_end);
    let trailers = if tail.is_empty() {
        Vec::new()
    } else {
        parse_trailers(tail)?
    };
    let mut pseudo = start_pseudo(start, &other_pseudo);
    pseudo.extend(other_pseudo);
    Some(StoredH2 {
        start_line,
        pseudo,
        headers,
        body,
        trailers,
    })
}

fn parse_start_line(line: &[u8]) -> Option<StartLine<'_>> {
    if let Some(status) = line.strip_prefix(RESPONSE_PREFIX) {
        return Some(StartLine::Response { status });
    }
    let without_version = line.strip_suffix(REQUEST_SUFFIX)?;
    let space = without_version.iter().position(|&b| b == b' ')?;
    let (method, uri) = without_version.split_at(space);
    Some(StartLine::Request {
        method,
        uri: uri.get(1..)?,
    })
}

/// The pseudo-headers the start line stands for. A CONNECT whose target is its
/// `:authority` (no `:path` was received) gets no `:path` back.
fn start_pseudo<'a>(start: StartLine<'a>, other_pseudo: &[Field<'a>]) -> Vec<Field<'a>> {
    match start {
        StartLine::Response { status } => vec![(STATUS, status)],
        StartLine::Request { method, uri } => {
            let target_is_authority = method == b"CONNECT"
                && other_pseudo.contains(&(AUTHORITY, uri))
                && !other_pseudo.iter().any(|(name, _)| *name == PATH);
            if target_is_authority {
                vec![(METHOD, method)]
            } else {
                vec![(METHOD, method), (PATH, uri)]
            }
        }
    }
}

fn parse_trailers(mut rest: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut trailers = Vec::new();
    loop {
        let (line, after) = split_line(rest)?;
        rest = after;
        if line.is_empty() {
            return rest.is_empty().then_some(trailers);
        }
        trailers.push(split_field(line)?);
    }
}

/// The line before the first CRLF, and what follows it.
fn split_line(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = bytes.windows(2).position(|pair| pair == b"\r\n")?;
    Some((bytes.get(..end)?, bytes.get(end + 2..)?))
}

/// `name: value`, where the name may start with `:` (names hold no `:` after that).
fn split_field(line: &[u8]) -> Option<Field<'_>> {
    let colon = line.iter().skip(1).position(|&b| b == b':')? + 1;
    let name = line.get(..colon)?;
    let value = line.get(colon..)?.strip_prefix(b": ")?;
    Some((name, value))
}
