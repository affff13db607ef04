//! GoReplay's file format, so users can bring recordings in and take them out.
//!
//! Each payload is a header line `TYPE ID TIMESTAMP_NS LATENCY_NS`, the raw HTTP message, and
//! the separator line `🐵🙈🙉`: TYPE 1 is a request, 2 the original response, 3 a replayed
//! response; a request and its responses share ID (hex). GoReplay keeps no connection or
//! address information, so imported messages get one connection per request.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;

use crate::message::{HttpMessage, MessageKind};
use crate::packet::Timestamp;
use crate::store::{StoredKind, StoredMessage};

/// The separator GoReplay writes after every payload.
pub const SEPARATOR: &str = "\n🐵🙈🙉\n";

/// Why a GoReplay file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GorError {
    #[error(
        "payload {index}: bad header line {line:?}; expected `TYPE ID TIMESTAMP_NS LATENCY_NS`"
    )]
    BadHeader { index: usize, line: String },
    #[error("payload {index}: no header line")]
    NoHeader { index: usize },
}

/// One payload of a GoReplay file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GorPayload {
    /// 1 request, 2 response, 3 replayed response.
    pub kind: u8,
    pub id: String,
    pub ts_ns: u64,
    pub latency_ns: i64,
    pub bytes: Bytes,
}

/// Writes one payload.
pub fn write_payload(out: &mut impl Write, p: &GorPayload) -> std::io::Result<()> {
    writeln!(out, "{} {} {} {}", p.kind, p.id, p.ts_ns, p.latency_ns)?;
    out.write_all(&p.bytes)?;
    out.write_all(SEPARATOR.as_bytes())
}

/// Splits a GoReplay file into payloads. The last payload may lack its separator.
pub fn parse(data: &[u8]) -> Result<Vec<GorPayload>, GorError> {
    let sep = SEPARATOR.as_bytes();
    let mut out = Vec::new();
    let mut rest = data;
    let mut index = 0;
    while !rest.is_empty() {
        let (payload, next) = match rest.windows(sep.len()).position(|w| w == sep) {
            Some(p) => (&rest[..p], &rest[p + sep.len()..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if payload.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let nl = payload
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(GorError::NoHeader { index })?;
        let line = String::from_utf8_lossy(&payload[..nl]).to_string();
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || GorError::BadHeader {
            index,
            line: line.clone(),
        };
        if f.len() < 3 {
            return Err(bad());
        }
        let kind: u8 = f[0].parse().map_err(|_| bad())?;
        if !(1..=3).contains(&kind) {
            return Err(bad());
        }
        out.push(GorPayload {
            kind,
            id: f[1].to_string(),
            ts_ns: f[2].parse().map_err(|_| bad())?,
            latency_ns: f.get(3).and_then(|l| l.parse().ok()).unwrap_or(0),
            bytes: Bytes::copy_from_slice(&payload[nl + 1..]),
        });
        index += 1;
    }
    Ok(out)
}

/// GoReplay id of a stored message: its request's (run, id), as 24 hex digits.
fn gor_id(run: u64, id: u64) -> String {
    format!("{:08x}{:016x}", run as u32 ^ (run >> 32) as u32, id)
}

/// Turns a stored message into a payload (type 1 or 2).
pub fn to_payload(m: &StoredMessage, request_ts: Option<u64>) -> GorPayload {
    match &m.meta.kind {
        StoredKind::Request { .. } => GorPayload {
            kind: 1,
            id: gor_id(m.meta.run, m.meta.id),
            ts_ns: m.meta.first_ts,
            latency_ns: 0,
            bytes: m.bytes.clone(),
        },
        StoredKind::Response { .. } => GorPayload {
            kind: 2,
            id: gor_id(m.meta.run, m.meta.request_id.unwrap_or(m.meta.id)),
            ts_ns: m.meta.first_ts,
            latency_ns: request_ts
                .map(|r| m.meta.first_ts as i64 - r as i64)
                .unwrap_or(0),
            bytes: m.bytes.clone(),
        },
    }
}

/// First line of an HTTP message: `METHOD URI` of a request or the status of a response.
fn kind_of(bytes: &[u8], request: bool) -> MessageKind {
    let line_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = String::from_utf8_lossy(&bytes[..line_end]);
    let mut parts = line.split_whitespace();
    if request {
        MessageKind::Request {
            method: parts.next().unwrap_or_default().into(),
            uri: parts.next().unwrap_or_default().into(),
        }
    } else {
        let status = parts.nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        MessageKind::Response { status }
    }
}

/// Body length from the head/body split (the exact framing is the sender's business).
fn body_len(bytes: &[u8]) -> u64 {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2));
    end.map(|e| (bytes.len() - e) as u64).unwrap_or(0)
}

/// Turns payloads into messages: requests and original responses (replayed responses,
/// type 3, are not traffic that was seen and are skipped). Returns the messages and how many
/// payloads were skipped.
pub fn to_messages(payloads: &[GorPayload]) -> (Vec<HttpMessage>, u64) {
    let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let mut request_ids: HashMap<&str, (u64, u64)> = HashMap::new();
    let mut messages = Vec::new();
    let mut skipped = 0;
    let mut next_id = 0u64;
    for p in payloads {
        let request = match p.kind {
            1 => true,
            2 => false,
            _ => {
                skipped += 1;
                continue;
            }
        };
        next_id += 1;
        let (conn_id, request_id) = if request {
            request_ids.insert(&p.id, (next_id, next_id));
            (next_id, None)
        } else {
            match request_ids.get(p.id.as_str()) {
                Some((conn, req)) => (*conn, Some(*req)),
                None => (next_id, None),
            }
        };
        messages.push(HttpMessage {
            id: next_id,
            conn_id,
            kind: kind_of(&p.bytes, request),
            minor_version: 1,
            request_id,
            first_ts: Timestamp(p.ts_ns),
            last_ts: Timestamp(p.ts_ns),
            src: unspecified,
            dst: unspecified,
            bytes: p.bytes.clone(),
            body_len: body_len(&p.bytes),
            complete: true,
        });
    }
    (messages, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_through_the_file_format() {
        let payloads = vec![
            GorPayload {
                kind: 1,
                id: "0000000a0000000000000001".into(),
                ts_ns: 1_700_000_000_000_000_000,
                latency_ns: 0,
                bytes: Bytes::from_static(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
            },
            GorPayload {
                kind: 2,
                id: "0000000a0000000000000001".into(),
                ts_ns: 1_700_000_000_000_500_000,
                latency_ns: 500_000,
                bytes: Bytes::from_static(b"HTTP/1.1 204 No Content\r\n\r\n"),
            },
        ];
        let mut file = Vec::new();
        for p in &payloads {
            write_payload(&mut file, p).unwrap();
        }
        assert_eq!(parse(&file).unwrap(), payloads);
        let (messages, skipped) = to_messages(&payloads);
        assert_eq!(skipped, 0);
        assert_eq!(
            messages[0].kind,
            MessageKind::Request {
                method: "POST".into(),
                uri: "/x".into()
            }
        );
        assert_eq!(messages[0].body_len, 3);
        assert_eq!(messages[1].kind, MessageKind::Response { status: 204 });
        assert_eq!(messages[1].request_id, Some(messages[0].id));
    }

    #[test]
    fn a_file_written_by_goreplay_itself_parses() {
        // The shape GoReplay writes: header, message, separator; replayed responses (3) too.
        let file = "1 8a3b0c1d2e3f405162738495 1558000000000000000 0\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\n🐵🙈🙉\n\
                    3 8a3b0c1d2e3f405162738495 1558000000100000000 100000000\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\n🐵🙈🙉\n";
        let payloads = parse(file.as_bytes()).unwrap();
        assert_eq!(payloads.len(), 2);
        let (messages, skipped) = to_messages(&payloads);
        assert_eq!((messages.len(), skipped), (1, 1));
    }

    #[test]
    fn garbage_headers_are_errors_not_panics() {
        assert!(matches!(
            parse(b"not a header\nGET /"),
            Err(GorError::BadHeader { .. })
        ));
        assert!(matches!(
            parse(b"9 id 1 1\nx"),
            Err(GorError::BadHeader { .. })
        ));
        assert!(matches!(
            parse(b"no newline at all"),
            Err(GorError::NoHeader { .. })
        ));
    }
}
