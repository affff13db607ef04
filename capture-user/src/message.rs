//! The unit everything downstream of framing works with: one HTTP message, its exact bytes
//! and where and when it was seen.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::packet::Timestamp;

/// Request or response, with what identifies it in a listing. Method and URI are
/// [`CompactString`]s: short ones (most) live inline, so framing a request allocates nothing
/// for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Request {
        method: CompactString,
        uri: CompactString,
    },
    Response {
        status: u16,
    },
}

/// The HTTP version a message was carried in. It decides how the message's bytes are laid out
/// (HTTP/1's wire bytes, or HTTP/2's stored form, see `http2`) and how replay sends it.
/// Stored as one byte: 0 and 1 are HTTP/1.0 and 1.1 (the minor version, as stores written
/// before HTTP/2 hold it), 20 is HTTP/2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum HttpVersion {
    Http10,
    #[default]
    Http11,
    Http2,
}

impl HttpVersion {
    /// HTTP/1.`minor`.
    pub fn http1(minor: u8) -> Self {
        if minor == 0 {
            Self::Http10
        } else {
            Self::Http11
        }
    }

    /// As written in listings: "HTTP/1.1".
    pub fn label(self) -> &'static str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
        }
    }
}

impl From<HttpVersion> for u8 {
    fn from(version: HttpVersion) -> u8 {
        match version {
            HttpVersion::Http10 => 0,
            HttpVersion::Http11 => 1,
            HttpVersion::Http2 => 20,
        }
    }
}

impl TryFrom<u8> for HttpVersion {
    type Error = String;

    fn try_from(byte: u8) -> Result<Self, String> {
        match byte {
            0 => Ok(Self::Http10),
            1 => Ok(Self::Http11),
            20 => Ok(Self::Http2),
            other => Err(format!("unknown HTTP version byte {other}")),
        }
    }
}

/// One HTTP message as captured (HTTP/1.x, or HTTP/2 in its stored form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpMessage {
    /// Unique within a capture run, in the order messages started.
    pub id: u64,
    /// Connection the message belongs to (unique within a capture run). TLS streams
    /// (`--tls`) are numbered from [`TLS_CONN_BASE`] up.
    pub conn_id: u64,
    pub kind: MessageKind,
    pub version: HttpVersion,
    /// For responses: the id of the request it answers, when known.
    pub request_id: Option<u64>,
    /// When its first and last bytes were captured.
    pub first_ts: Timestamp,
    pub last_ts: Timestamp,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// HTTP/1: exactly the bytes seen on the wire (request/status line, headers and body as
    /// sent). HTTP/2: the stored form (`http2::render_stored`), since frames and HPACK are
    /// connection state.
    pub bytes: Bytes,
    /// Body length as framed (chunked: decoded length).
    pub body_len: u64,
    /// False when bytes are missing (a gap, a cut, a connection that ended early).
    pub complete: bool,
}

/// First connection number of TLS streams: a message from TLS plaintext (`--tls`) says so
/// by its connection number, which packet capture never reaches.
pub const TLS_CONN_BASE: u64 = 1 << 48;

impl HttpMessage {
    /// True for a message captured as TLS plaintext at the library (`--tls`).
    pub fn is_tls(&self) -> bool {
        self.conn_id >= TLS_CONN_BASE
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.kind, MessageKind::Request { .. })
    }

    /// An HTTP/2 response's `grpc-status` (from its trailers, or the headers of a
    /// trailers-only answer).
    pub fn grpc_status(&self) -> Option<String> {
        if self.version != HttpVersion::Http2 || self.is_request() {
            return None;
        }
        let stored = crate::http2::parse_stored(&self.bytes, self.body_len)?;
        let (_, value) = stored
            .trailers
            .iter()
            .chain(stored.headers.iter())
            .find(|(name, _)| name.eq_ignore_ascii_case(b"grpc-status"))?;
        Some(String::from_utf8_lossy(value).into_owned())
    }

    /// One listing line: time, connection, id, what it is, body size, flags.
    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "{} conn={} id={} ",
            self.first_ts.to_rfc3339(),
            self.conn_id,
            self.id
        );
        match &self.kind {
            MessageKind::Request { method, uri } => {
                let _ = write!(line, "{} > {} request {method} {uri}", self.src, self.dst);
            }
            MessageKind::Response { status } => {
                let _ = write!(line, "{} > {} response {status}", self.src, self.dst);
                if let Some(req) = self.request_id {
                    let _ = write!(line, " to={req}");
                }
            }
        }
        if self.version == HttpVersion::Http2 {
            line.push_str(" http2");
            if let Some(code) = self.grpc_status() {
                let _ = write!(line, " grpc-status={code}");
            }
        }
        let _ = write!(line, " body={}", self.body_len);
        if !self.complete {
            line.push_str(" incomplete");
        }
        if self.is_tls() {
            line.push_str(" tls");
        }
        line
    }
}
