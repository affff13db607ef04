//! What a replay sends: the complete recorded requests in recorded order, each with the status
//! the target answered when it was recorded (to spot behaviour changes). Sans-IO: built from
//! messages, wherever they came from (a recording, a GoReplay file, a pcap).

use std::collections::HashMap;

use bytes::Bytes;

use crate::message::{HttpMessage, MessageKind};
use crate::store::StoredMessage;

/// One recorded request to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayRequest {
    /// Recorded message id, unique within the source (what `--sample` hashes by request).
    pub id: u64,
    /// Recorded connection (requests of one connection replay over one connection, in order).
    pub conn: u64,
    /// Capture time of its first byte (ns since the epoch).
    pub ts_ns: u64,
    pub method: String,
    pub uri: String,
    /// The exact recorded bytes (head and body as sent).
    pub bytes: Bytes,
    /// Final status of the recorded response, when it was recorded.
    pub recorded_status: Option<u16>,
}

/// What turning messages into requests left out, so nothing vanishes silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceStats {
    /// Complete requests kept.
    pub requests: u64,
    /// Requests with missing bytes: sending half a request would hang the target.
    pub incomplete_skipped: u64,
    /// Requests with a recorded final response.
    pub with_recorded_response: u64,
}

/// Keeps the complete requests of `messages`, in capture order (first byte, then id), each
/// paired with its recorded final response status (interim 1xx responses are not final).
pub fn requests_from_messages(messages: &[HttpMessage]) -> (Vec<ReplayRequest>, SourceStats) {
    let mut status_of: HashMap<u64, u16> = HashMap::new();
    for m in messages {
        if let (MessageKind::Response { status }, Some(req)) = (&m.kind, m.request_id)
            && !(100..200).contains(status)
        {
            status_of.entry(req).or_insert(*status);
        }
    }
    let mut stats = SourceStats::default();
    let mut order: Vec<(u64, u64, ReplayRequest)> = Vec::new();
    for m in messages {
        let MessageKind::Request { method, uri } = &m.kind else {
            continue;
        };
        if !m.complete {
            stats.incomplete_skipped += 1;
            continue;
        }
        let recorded_status = status_of.get(&m.id).copied();
        stats.requests += 1;
        stats.with_recorded_response += u64::from(recorded_status.is_some());
        order.push((
            m.first_ts.as_nanos(),
            m.id,
            ReplayRequest {
                id: m.id,
                conn: m.conn_id,
                ts_ns: m.first_ts.as_nanos(),
                method: method.to_string(),
                uri: uri.to_string(),
                bytes: m.bytes.clone(),
                recorded_status,
            },
        ));
    }
    order.sort_by_key(|(ts, id, _)| (*ts, *id));
    (order.into_iter().map(|(_, _, r)| r).collect(), stats)
}

/// Turns stored messages into messages whose ids are unique across the nodes and capture runs
/// a recording gathers (each recorder numbers its own messages and connections from 1).
pub fn from_stored(stored: impl IntoIterator<Item = StoredMessage>) -> Vec<HttpMessage> {
    let mut ids: HashMap<(String, u64, u64), u64> = HashMap::new();
    let mut conns: HashMap<(String, u64, u64), u64> = HashMap::new();
    let fresh = |map: &mut HashMap<(String, u64, u64), u64>, key: (String, u64, u64)| {
        let next = map.len() as u64 + 1;
        *map.entry(key).or_insert(next)
    };
    stored
        .into_iter()
        .map(|s| {
            let mut m = s.to_http();
            let (node, run) = (s.meta.node, s.meta.run);
            m.id = fresh(&mut ids, (node.clone(), run, m.id));
            m.request_id = m
                .request_id
                .map(|r| fresh(&mut ids, (node.clone(), run, r)));
            m.conn_id = fresh(&mut conns, (node, run, m.conn_id));
            m
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::Timestamp;
    use std::net::SocketAddr;

    fn msg(id: u64, conn: u64, ts: u64, kind: MessageKind, req: Option<u64>) -> HttpMessage {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        HttpMessage {
            id,
            conn_id: conn,
            kind,
            minor_version: 1,
            request_id: req,
            first_ts: Timestamp(ts),
            last_ts: Timestamp(ts),
            src: addr,
            dst: addr,
            bytes: Bytes::from(format!("message {id}")),
            body_len: 0,
            complete: true,
        }
    }

    fn get(uri: &str) -> MessageKind {
        MessageKind::Request {
            method: "GET".into(),
            uri: uri.into(),
        }
    }

    #[test]
    fn stored_ids_are_made_unique_across_nodes_and_runs() {
        let stored = |node: &str, m: HttpMessage| StoredMessage {
            meta: crate::store::meta_for(&m, node, 7, &["r".to_string()]),
            bytes: m.bytes.clone(),
        };
        let messages = from_stored(vec![
            stored("a", msg(1, 1, 10, get("/a"), None)),
            stored("b", msg(1, 1, 11, get("/b"), None)),
            stored(
                "b",
                msg(2, 1, 12, MessageKind::Response { status: 500 }, Some(1)),
            ),
            stored(
                "a",
                msg(2, 1, 13, MessageKind::Response { status: 200 }, Some(1)),
            ),
        ]);
        let (requests, _) = requests_from_messages(&messages);
        let got: Vec<(&str, Option<u16>)> = requests
            .iter()
            .map(|r| (r.uri.as_str(), r.recorded_status))
            .collect();
        assert_eq!(got, vec![("/a", Some(200)), ("/b", Some(500))]);
        assert_ne!(requests[0].conn, requests[1].conn);
    }

    #[test]
    fn keeps_complete_requests_in_capture_order_with_final_statuses() {
        let mut incomplete = msg(5, 3, 15, get("/cut"), None);
        incomplete.complete = false;
        let messages = vec![
            msg(3, 2, 20, get("/b"), None),
            msg(1, 1, 10, get("/a"), None),
            msg(2, 1, 11, MessageKind::Response { status: 100 }, Some(1)),
            msg(4, 1, 12, MessageKind::Response { status: 201 }, Some(1)),
            incomplete,
            msg(6, 2, 21, MessageKind::Response { status: 404 }, Some(3)),
            msg(7, 4, 20, get("/same-time-later-id"), None),
        ];
        let (requests, stats) = requests_from_messages(&messages);
        let uris: Vec<&str> = requests.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(uris, vec!["/a", "/b", "/same-time-later-id"]);
        assert_eq!(requests[0].recorded_status, Some(201));
        assert_eq!(requests[1].recorded_status, Some(404));
        assert_eq!(requests[2].recorded_status, None);
        assert_eq!(requests[0].bytes, Bytes::from("message 1"));
        assert_eq!(
            stats,
            SourceStats {
                requests: 3,
                incomplete_skipped: 1,
                with_recorded_response: 2
            }
        );
    }
}
