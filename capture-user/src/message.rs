//! The unit everything downstream of framing works with: one HTTP message, its exact bytes
//! and where and when it was seen.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use compact_str::CompactString;

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

/// One HTTP/1.x message as captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpMessage {
    /// Unique within a capture run, in the order messages started.
    pub id: u64,
    /// Connection the message belongs to (unique within a capture run).
    pub conn_id: u64,
    pub kind: MessageKind,
    /// HTTP/1.`minor_version`.
    pub minor_version: u8,
    /// For responses: the id of the request it answers, when known.
    pub request_id: Option<u64>,
    /// When its first and last bytes were captured.
    pub first_ts: Timestamp,
    pub last_ts: Timestamp,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Exactly the bytes seen on the wire: request/status line, headers and body as sent.
    pub bytes: Bytes,
    /// Body length as framed (chunked: decoded length).
    pub body_len: u64,
    /// False when bytes are missing (a gap, a cut, a connection that ended early).
    pub complete: bool,
}

impl HttpMessage {
    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.kind, MessageKind::Request { .. })
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
        let _ = write!(line, " body={}", self.body_len);
        if !self.complete {
            line.push_str(" incomplete");
        }
        line
    }
}
