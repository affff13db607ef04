//! Reading the target's answers on one replay connection. Sans-IO: fed the bytes sent and
//! received, it says when the final response to the request in flight is complete, what its
//! status is, and whether the connection may carry the next request.
//!
//! It reuses the capture framer, so a replayed exchange is delimited exactly like a captured
//! one (HEAD, 1xx, 204/304, chunked, close-delimited bodies).

use bytes::Bytes;

use crate::http::{ConnectionFramer, FramedMessage, HttpConfig, HttpStats, IdAllocator};
use crate::message::{HttpVersion, MessageKind};
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// Response bytes beyond this are counted, not kept: the status and the first MiB are what
/// replay and `--diff` look at.
pub const KEEP_RESPONSE_BYTES: usize = 1 << 20;

/// The final response to a replayed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseOutcome {
    pub status: u16,
    /// The response as received (head and body), cut at [`KEEP_RESPONSE_BYTES`].
    pub bytes: Bytes,
    /// Body length as framed (chunked: decoded).
    pub body_len: u64,
    /// The server may take the next request on this connection.
    pub keep_alive: bool,
}

/// Why no usable response arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("the target sent bytes that are not an HTTP response")]
    BadResponse,
    #[error("the connection closed before the response was complete")]
    Truncated,
}

/// Frames the responses of one replay connection.
pub struct ResponseReader {
    framer: ConnectionFramer,
    ids: IdAllocator,
    stats: HttpStats,
    out: Vec<FramedMessage>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    /// A reader for a fresh connection.
    pub fn new() -> Self {
        let config = HttpConfig {
            max_message_bytes: KEEP_RESPONSE_BYTES,
            ..HttpConfig::default()
        };
        Self {
            framer: ConnectionFramer::new(config, false),
            ids: IdAllocator::default(),
            stats: HttpStats::default(),
            out: Vec::new(),
        }
    }

    /// The request just written: its method tells the framer, e.g., that a HEAD's answer
    /// has no body. The request itself is not framed (it goes as recorded).
    pub fn request_sent(&mut self, request: &[u8]) {
        let method = request.split(|&b| b == b' ').next().unwrap_or_default();
        let method = std::str::from_utf8(method).unwrap_or_default();
        self.framer
            .request_written(method, &mut self.ids, &mut self.stats);
    }

    /// Bytes read from the target. `Some` once the final response is complete.
    pub fn received(&mut self, bytes: &[u8]) -> Option<Result<ResponseOutcome, ResponseError>> {
        let before = self.stats;
        self.framer.data(
            FlowDir::ToClient,
            Timestamp(0),
            Bytes::copy_from_slice(bytes),
            &mut self.ids,
            &mut self.stats,
            &mut self.out,
        );
        if self.stats.bad_message_head > before.bad_message_head
            || self.stats.resync_skipped_bytes > before.resync_skipped_bytes
            || self.stats.bad_framing > before.bad_framing
        {
            return Some(Err(ResponseError::BadResponse));
        }
        self.take_final(false)
    }

    /// The target closed the connection: a close-delimited body ends here; anything else
    /// still open was cut short.
    pub fn closed(&mut self) -> Result<ResponseOutcome, ResponseError> {
        self.framer
            .close(Timestamp(0), &mut self.ids, &mut self.stats, &mut self.out);
        self.take_final(true)
            .unwrap_or(Err(ResponseError::Truncated))
    }

    fn take_final(&mut self, closing: bool) -> Option<Result<ResponseOutcome, ResponseError>> {
        while !self.out.is_empty() {
            let m = self.out.remove(0);
            let MessageKind::Response { status } = m.kind else {
                continue;
            };
            if (100..200).contains(&status) && status != 101 {
                continue; // interim (100 Continue, 103 Early Hints): the final one follows
            }
            // A body cut at KEEP_RESPONSE_BYTES was still received whole: `ended`.
            if !m.ended {
                return Some(Err(ResponseError::Truncated));
            }
            let keep_alive = !closing && status != 101 && keeps_alive(&m.bytes, m.version);
            return Some(Ok(ResponseOutcome {
                status,
                bytes: m.bytes,
                body_len: m.body_len,
                keep_alive,
            }));
        }
        None
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; 1.0 only with `keep-alive`.
fn keeps_alive(response: &[u8], version: HttpVersion) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    if parsed.parse(response).is_err() {
        return false;
    }
    let mut close = version == HttpVersion::Http10;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    return false;
                }
                if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        }
    }
    !close
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(
        request: &[u8],
        chunks: &[&[u8]],
    ) -> Option<Result<ResponseOutcome, ResponseError>> {
        let mut r = ResponseReader::new();
        r.request_sent(request);
        for c in chunks {
            if let Some(done) = r.received(c) {
                return Some(done);
            }
        }
        None
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    #[test]
    fn content_length_response_completes_at_its_last_byte() {
        let resp: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 1..resp.len() {
            let got = exchange(GET, &[&resp[..cut], &resp[cut..]]);
            assert_eq!(
                got,
                Some(Ok(ResponseOutcome {
                    status: 200,
                    bytes: Bytes::from_static(resp),
                    body_len: 5,
                    keep_alive: true
                })),
                "cut at {cut}"
            );
        }
        assert_eq!(exchange(GET, &[&resp[..resp.len() - 1]]), None);
    }

    #[test]
    fn interim_responses_are_skipped_and_head_has_no_body() {
        let got = exchange(
            b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
            &[b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"],
        );
        assert_eq!(got.unwrap().unwrap().status, 201);
        let got = exchange(
            b"HEAD / HTTP/1.1\r\n\r\n",
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"],
        );
        assert_eq!(got.unwrap().unwrap().body_len, 0);
    }

    #[test]
    fn chunked_and_connection_close_and_http10() {
        let got = exchange(
            GET,
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"],
        )
        .unwrap()
        .unwrap();
        assert_eq!((got.body_len, got.keep_alive), (3, false));
        let got = exchange(GET, &[b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"]);
        assert!(!got.unwrap().unwrap().keep_alive);
        let got = exchange(
            GET,
            &[b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"],
        );
        assert!(got.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn close_delimited_body_ends_at_close_and_cut_bodies_are_truncated() {
        let mut r = ResponseReader::new();
        r.request_sent(GET);
        assert_eq!(r.received(b"HTTP/1.1 200 OK\r\n\r\nuntil close"), None);
        let got = r.closed().unwrap();
        assert_eq!((got.status, got.body_len, got.keep_alive), (200, 11, false));

        let mut r = ResponseReader::new();
        r.request_sent(GET);
        assert_eq!(
            r.received(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"),
            None
        );
        assert_eq!(r.closed(), Err(ResponseError::Truncated));

        let mut r = ResponseReader::new();
        r.request_sent(GET);
        assert_eq!(r.closed(), Err(ResponseError::Truncated));
    }

    #[test]
    fn garbage_is_a_bad_response() {
        let got = exchange(GET, &[b"SSH-2.0-OpenSSH_9.2\r\n"]);
        assert_eq!(got, Some(Err(ResponseError::BadResponse)));
    }

    #[test]
    fn large_bodies_complete_without_being_kept() {
        let body = vec![b'x'; 3 << 20];
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let mut r = ResponseReader::new();
        r.request_sent(GET);
        assert_eq!(r.received(head.as_bytes()), None);
        let mut done = None;
        for c in body.chunks(65536) {
            if let Some(d) = r.received(c) {
                done = Some(d);
            }
        }
        let got = done.unwrap().unwrap();
        assert_eq!(
            (got.status, got.body_len, got.keep_alive),
            (200, 3 << 20, true)
        );
    }

    #[test]
    fn keep_alive_serves_several_exchanges() {
        let mut r = ResponseReader::new();
        for status in [200u16, 404, 500] {
            r.request_sent(GET);
            let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(r.received(resp.as_bytes()).unwrap().unwrap().status, status);
        }
    }
}
