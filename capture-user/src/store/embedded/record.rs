//! One message inside a batch payload: a fixed little-endian layout written straight into the
//! batch buffer (no allocation per message), and read back into `MessageMeta` + wire bytes.
//!
//! What every message of a batch shares (node, run, recording names) lives in the batch
//! header, not here. Layout, little-endian:
//!
//! ```text
//! u32 wire_len  u64 id  u64 conn_id  u64 first_ts  u64 last_ts  u64 body_len  u64 request_id
//! u8 flags (1 complete, 2 has request_id, 4 response, 8 src is IPv6, 16 dst is IPv6)
//! u8 HTTP version (0 1.0, 1 1.1, 20 HTTP/2)  u16 status (response) or method length (request)  u32 uri length
//! src ip (4 or 16) u16 port   dst ip (4 or 16) u16 port   method  uri   wire bytes
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;

use crate::message::{HttpMessage, HttpVersion, MessageKind};
use crate::store::{MessageMeta, StoredKind};

/// Fixed part of a record, before addresses, method, URI and wire bytes.
pub const FIXED_LEN: usize = 4 + 8 * 6 + 1 + 1 + 2 + 4;

const COMPLETE: u8 = 1;
const HAS_REQUEST_ID: u8 = 2;
const RESPONSE: u8 = 4;
const SRC_V6: u8 = 8;
const DST_V6: u8 = 16;

/// Largest message the log stores (lengths are u32 on disk; HTTP framing caps far below).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Bytes `message` takes in a batch payload.
pub fn encoded_len(message: &HttpMessage) -> usize {
    let addr = |a: &SocketAddr| if a.is_ipv4() { 6 } else { 18 };
    let strings = match &message.kind {
        MessageKind::Request { method, uri } => method.len() + uri.len(),
        MessageKind::Response { .. } => 0,
    };
    FIXED_LEN + addr(&message.src) + addr(&message.dst) + strings + message.bytes.len()
}

/// Appends `message` to `out`. The caller checks the sizes first (`check`).
pub fn encode(message: &HttpMessage, out: &mut Vec<u8>) {
    let mut flags = 0u8;
    if message.complete {
        flags |= COMPLETE;
    }
    if message.request_id.is_some() {
        flags |= HAS_REQUEST_ID;
    }
    if message.src.is_ipv6() {
        flags |= SRC_V6;
    }
    if message.dst.is_ipv6() {
        flags |= DST_V6;
    }
    let (method, uri, short) = match &message.kind {
        MessageKind::Request { method, uri } => (method.as_bytes(), uri.as_bytes(), method.len()),
        MessageKind::Response { status } => {
            flags |= RESPONSE;
            (&[][..], &[][..], usize::from(*status))
        }
    };
    out.reserve(encoded_len(message));
    let mut fixed = [0u8; FIXED_LEN];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        fixed[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&(message.bytes.len() as u32).to_le_bytes());
    put(&message.id.to_le_bytes());
    put(&message.conn_id.to_le_bytes());
    put(&message.first_ts.0.to_le_bytes());
    put(&message.last_ts.0.to_le_bytes());
    put(&message.body_len.to_le_bytes());
    put(&message.request_id.unwrap_or(0).to_le_bytes());
    put(&[flags, u8::from(message.version)]);
    put(&(short as u16).to_le_bytes());
    put(&(uri.len() as u32).to_le_bytes());
    out.extend_from_slice(&fixed);
    put_addr(out, &message.src);
    put_addr(out, &message.dst);
    out.extend_from_slice(method);
    out.extend_from_slice(uri);
    out.extend_from_slice(&message.bytes);
}

/// Why a message cannot be stored, if it cannot (lengths that do not fit the layout).
pub fn check(message: &HttpMessage) -> Result<(), String> {
    if message.bytes.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message {} has {} bytes, over the embedded store's limit of {MAX_MESSAGE_BYTES}",
            message.id,
            message.bytes.len()
        ));
    }
    if let MessageKind::Request { method, uri } = &message.kind
        && (method.len() > usize::from(u16::MAX) || uri.len() > MAX_MESSAGE_BYTES)
    {
        return Err(format!(
            "message {}: request method or URI too long to store",
            message.id
        ));
    }
    Ok(())
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_le_bytes());
}

/// What the batch header gives every message of the batch.
pub struct Shared<'a> {
    pub node: &'a str,
    pub run: u64,
    pub recordings: &'a [String],
}

/// Reads records one after the other from a decoded payload; slices share its buffer.
pub struct Reader {
    buf: Bytes,
    at: usize,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf, at: 0 }
    }

    /// True once every byte was read.
    pub fn is_done(&self) -> bool {
        self.at >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "record cut short: {n} bytes wanted at payload byte {}, {} left",
                    self.at,
                    self.buf.len() - self.at
                )
            })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn addr(&mut self, v6: bool) -> Result<SocketAddr, String> {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    fn string(&mut self, n: usize, what: &str) -> Result<String, String> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| format!("record's {what} is not UTF-8"))
    }

    /// The next record, with the batch's shared metadata.
    pub fn next_message(&mut self, shared: &Shared<'_>) -> Result<(MessageMeta, Bytes), String> {
        let wire_len = self.u32()? as usize;
        let id = self.u64()?;
        let conn_id = self.u64()?;
        let first_ts = self.u64()?;
        let last_ts = self.u64()?;
        let body_len = self.u64()?;
        let request_id = self.u64()?;
        let [flags, version] = self.array::<2>()?;
        let short = self.u16()?;
        let uri_len = self.u32()? as usize;
        let src = self.addr(flags & SRC_V6 != 0)?;
        let dst = self.addr(flags & DST_V6 != 0)?;
        let kind = if flags & RESPONSE != 0 {
            StoredKind::Response { status: short }
        } else {
            let method = self.string(usize::from(short), "method")?;
            let uri = self.string(uri_len, "URI")?;
            StoredKind::Request { method, uri }
        };
        let start = self.at;
        self.take(wire_len)?;
        let bytes = self.buf.slice(start..start + wire_len);
        let meta = MessageMeta {
            node: shared.node.to_string(),
            run: shared.run,
            id,
            conn_id,
            kind,
            request_id: (flags & HAS_REQUEST_ID != 0).then_some(request_id),
            version: HttpVersion::try_from(version)?,
            first_ts,
            last_ts,
            src,
            dst,
            body_len,
            complete: flags & COMPLETE != 0,
            recordings: shared.recordings.to_vec(),
            fragment: 0,
            fragments: 1,
            total_len: wire_len as u64,
        };
        Ok((meta, bytes))
    }

    /// Skips the next record (messages before a window's start) without building it;
    /// returns its wire length.
    pub fn skip(&mut self) -> Result<usize, String> {
        let wire_len = self.u32()? as usize;
        self.take(8 * 6)?;
        let [flags, _] = self.array::<2>()?;
        let short = usize::from(self.u16()?);
        let uri_len = self.u32()? as usize;
        let addrs = |v6| if v6 { 18 } else { 6 };
        let strings = if flags & RESPONSE != 0 {
            0
        } else {
            short + uri_len
        };
        self.take(addrs(flags & SRC_V6 != 0) + addrs(flags & DST_V6 != 0) + strings + wire_len)?;
        Ok(wire_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Timestamp;

    pub(crate) fn message(id: u64, request: bool, v6: bool) -> HttpMessage {
        let (src, dst): (SocketAddr, SocketAddr) = if v6 {
            (
                "[fe80::1]:40000".parse().unwrap(),
                "[::1]:80".parse().unwrap(),
            )
        } else {
            (
                "10.0.0.1:40000".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
            )
        };
        HttpMessage {
            id,
            conn_id: id % 3,
            kind: if request {
                MessageKind::Request {
                    method: "PATCH".into(),
                    uri: format!("/items/{id}?q=é").into(),
                }
            } else {
                MessageKind::Response { status: 503 }
            },
            version: HttpVersion::Http11,
            request_id: (!request).then_some(id - 1),
            first_ts: Timestamp(1_000 + id),
            last_ts: Timestamp(2_000 + id),
            src,
            dst,
            bytes: Bytes::from(format!("HTTP bytes of {id}").repeat(id as usize % 4)),
            body_len: id * 10,
            complete: id.is_multiple_of(2),
        }
    }

    #[test]
    fn records_round_trip_with_shared_metadata() {
        let messages: Vec<_> = (1..=8).map(|i| message(i, i % 2 == 1, i % 4 < 2)).collect();
        let mut buf = Vec::new();
        for m in &messages {
            let before = buf.len();
            encode(m, &mut buf);
            assert_eq!(buf.len() - before, encoded_len(m));
        }
        let tags = vec!["r1".to_string(), "r2".to_string()];
        let shared = Shared {
            node: "n1",
            run: 77,
            recordings: &tags,
        };
        let mut reader = Reader::new(Bytes::from(buf.clone()));
        for m in &messages {
            let (meta, bytes) = reader.next_message(&shared).unwrap();
            let stored = crate::store::StoredMessage { meta, bytes };
            assert_eq!(&stored.to_http(), m);
            assert_eq!((stored.meta.node.as_str(), stored.meta.run), ("n1", 77));
            assert_eq!(stored.meta.recordings, tags);
        }
        assert!(reader.is_done());
        let mut skipper = Reader::new(Bytes::from(buf));
        for _ in &messages {
            skipper.skip().unwrap();
        }
        assert!(skipper.is_done());
    }

    #[test]
    fn a_cut_record_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode(&message(3, true, true), &mut buf);
        let shared = Shared {
            node: "n",
            run: 0,
            recordings: &[],
        };
        for cut in 0..buf.len() {
            let mut reader = Reader::new(Bytes::copy_from_slice(&buf[..cut]));
            assert!(reader.next_message(&shared).is_err(), "cut at {cut}");
            let mut reader = Reader::new(Bytes::copy_from_slice(&buf[..cut]));
            assert!(reader.skip().is_err(), "skip cut at {cut}");
        }
    }

    #[test]
    fn oversized_messages_are_refused_with_their_size() {
        let mut m = message(2, true, false);
        m.bytes = Bytes::from(vec![0u8; MAX_MESSAGE_BYTES + 1]);
        assert!(
            check(&m)
                .unwrap_err()
                .contains("over the embedded store's limit")
        );
        assert!(check(&message(2, true, false)).is_ok());
    }
}
