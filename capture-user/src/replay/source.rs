//! What a replay sends: the complete recorded requests in capture order, each with the status
//! the target answered when it was recorded (to spot behaviour changes). Sans-IO: fed messages
//! in the order a source holds them (a recording, a GoReplay file, a pcap), it hands requests
//! on in capture order through a bounded look-ahead, so a window of any size streams through
//! with memory bounded by the look-ahead, never by the window.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use compact_str::CompactString;
use serde::Serialize;

use crate::message::{HttpMessage, HttpVersion, MessageKind};
use crate::replay::sample::stable_hash;
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
    pub method: CompactString,
    pub uri: CompactString,
    /// The exact recorded bytes (head and body as sent; HTTP/2: the stored form).
    pub bytes: Bytes,
    /// HTTP/1.x or HTTP/2: how the request is sent.
    pub version: HttpVersion,
    /// Body bytes (HTTP/2's stored form is split into body and trailers by it).
    pub body_len: u64,
    /// Final status of the recorded response, when it was recorded.
    pub recorded_status: Option<u16>,
    /// The recorded final response as it was on the wire, kept only for `--diff` (see
    /// [`RequestStream::keeping_responses`]).
    pub recorded_response: Option<Bytes>,
    /// From the request's first byte to the recorded response's last.
    pub recorded_latency: Option<Duration>,
}

/// How far ahead of the request being handed on the source is read: requests wait this long
/// (in recorded time) or until this many wait, whichever comes first, for their responses and
/// for requests stored after them but captured before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookahead {
    pub time: Duration,
    pub requests: usize,
}

impl Default for Lookahead {
    /// A response stored more than 5 s after its request, or more than 50,000 requests later,
    /// is unusual enough to go without a recorded status; 50,000 requests are a few tens of MB.
    fn default() -> Self {
        Self {
            time: Duration::from_secs(5),
            requests: 50_000,
        }
    }
}

/// What turning messages into requests left out or could not do, so nothing vanishes silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SourceStats {
    /// Messages read from the source.
    pub messages: u64,
    /// Complete requests kept.
    pub requests: u64,
    /// Requests with missing bytes: sending half a request would hang the target.
    pub incomplete_skipped: u64,
    /// Requests with a recorded final response.
    pub with_recorded_response: u64,
    /// Final responses whose request had already been handed on (beyond the look-ahead) or
    /// was never seen: those requests replay without a recorded status.
    pub responses_unpaired: u64,
    /// Requests that came later than the look-ahead allows for their capture time: they are
    /// sent at once, late, and their lateness shows in the schedule lag.
    pub out_of_order: u64,
}

/// A request waiting in the look-ahead: ordered by capture time, then arrival.
type PendingKey = (u64, u64);

/// Requests in capture order with their recorded statuses, through a bounded look-ahead.
pub struct RequestStream {
    lookahead: Lookahead,
    /// Waiting requests in key order. Sources give requests nearly in capture order, so
    /// nearly every one goes at the back of this deque, and nothing is allocated per request
    /// (a B-tree of these 200-byte values allocated 2 KB leaves every few requests, and glibc
    /// consolidated its small free chunks before each).
    pending: VecDeque<(PendingKey, ReplayRequest)>,
    /// Requests that came after one captured later than they were: kept apart, so that
    /// keeping `pending` sorted never moves its middle.
    late: BTreeMap<PendingKey, ReplayRequest>,
    /// Request id → its key (in `pending` or `late`), for pairing responses.
    waiting: HashMap<u64, PendingKey, foldhash::fast::RandomState>,
    arrivals: u64,
    newest_ts: u64,
    released_ts: u64,
    stats: SourceStats,
    keep_responses: bool,
    /// Message bytes are kept as they come ([`RequestStream::taking_bytes_as_they_are`]).
    bytes_are_own: bool,
}

impl RequestStream {
    pub fn new(lookahead: Lookahead) -> Self {
        Self {
            lookahead,
            pending: VecDeque::new(),
            late: BTreeMap::new(),
            waiting: HashMap::default(),
            arrivals: 0,
            newest_ts: 0,
            released_ts: 0,
            stats: SourceStats::default(),
            keep_responses: false,
            bytes_are_own: false,
        }
    }

    /// Keeps each message's bytes as they come instead of copying them: for sources whose
    /// messages own their allocation (a GoReplay file's payloads), where a copy buys nothing.
    pub fn taking_bytes_as_they_are(mut self) -> Self {
        self.bytes_are_own = true;
        self
    }

    /// Also keeps each request's recorded response bytes, for comparing answers (`--diff`):
    /// memory then holds the look-ahead's responses too.
    pub fn keeping_responses(mut self) -> Self {
        self.keep_responses = true;
        self
    }

    /// Takes one message in source order; requests whose wait is over go to `out`.
    pub fn push(&mut self, m: HttpMessage, out: &mut Vec<ReplayRequest>) {
        self.stats.messages += 1;
        let ts = m.first_ts.as_nanos();
        self.newest_ts = self.newest_ts.max(ts);
        match m.kind {
            MessageKind::Request { method, uri } => {
                if !m.complete {
                    self.stats.incomplete_skipped += 1;
                } else {
                    self.stats.requests += 1;
                    if ts < self.released_ts {
                        self.stats.out_of_order += 1;
                    }
                    self.arrivals += 1;
                    let key = (ts, self.arrivals);
                    self.waiting.insert(m.id, key);
                    let bytes = if self.bytes_are_own {
                        m.bytes
                    } else {
                        // Owned: a slice would keep the whole batch it was read from alive.
                        Bytes::copy_from_slice(&m.bytes)
                    };
                    let request = ReplayRequest {
                        id: m.id,
                        conn: m.conn_id,
                        ts_ns: ts,
                        method,
                        uri,
                        bytes,
                        version: m.version,
                        body_len: m.body_len,
                        recorded_status: None,
                        recorded_response: None,
                        recorded_latency: None,
                    };
                    match self.pending.back() {
                        Some((last, _)) if *last > key => {
                            self.late.insert(key, request);
                        }
                        _ => self.pending.push_back((key, request)),
                    }
                }
            }
            MessageKind::Response { status } if !(100..200).contains(&status) => {
                let request = m.request_id.and_then(|id| self.waiting.remove(&id));
                let keep_responses = self.keep_responses;
                match request.and_then(|key| self.waiting_mut(key)) {
                    Some(r) => {
                        r.recorded_status = Some(status);
                        let took = m.last_ts.as_nanos().saturating_sub(r.ts_ns);
                        r.recorded_latency = Some(Duration::from_nanos(took));
                        if keep_responses {
                            r.recorded_response = Some(Bytes::copy_from_slice(&m.bytes));
                        }
                    }
                    None => self.stats.responses_unpaired += 1,
                }
            }
            MessageKind::Response { .. } => {}
        }
        self.release(false, out);
    }

    /// The source ended: every request still waiting goes to `out`.
    pub fn finish(&mut self, out: &mut Vec<ReplayRequest>) {
        self.release(true, out);
    }

    /// What the stream saw so far.
    pub fn stats(&self) -> SourceStats {
        self.stats
    }

    /// The waiting request of `key`, wherever it waits.
    fn waiting_mut(&mut self, key: PendingKey) -> Option<&mut ReplayRequest> {
        match self.pending.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(at) => self.pending.get_mut(at).map(|(_, r)| r),
            Err(_) => self.late.get_mut(&key),
        }
    }

    /// Requests waiting in the look-ahead.
    fn waiting_len(&self) -> usize {
        self.pending.len() + self.late.len()
    }

    /// The first waiting request's key, and whether it is a late one.
    fn first(&self) -> Option<(PendingKey, bool)> {
        let in_order = self.pending.front().map(|(k, _)| *k);
        let late = self.late.first_key_value().map(|(k, _)| *k);
        match (in_order, late) {
            (Some(a), Some(b)) => Some(if b < a { (b, true) } else { (a, false) }),
            (Some(a), None) => Some((a, false)),
            (None, b) => b.map(|b| (b, true)),
        }
    }

    fn release(&mut self, all: bool, out: &mut Vec<ReplayRequest>) {
        let horizon = self
            .newest_ts
            .saturating_sub(self.lookahead.time.as_nanos() as u64);
        loop {
            let over = self.waiting_len() > self.lookahead.requests;
            let Some(((ts, _), late)) = self.first() else {
                break;
            };
            if !(all || over || ts < horizon) {
                break;
            }
            let first = if late {
                self.late.pop_first()
            } else {
                self.pending.pop_front()
            };
            let Some((key, r)) = first else {
                break;
            };
            // A response that paired already took the id out; otherwise it stops waiting now.
            if self.waiting.get(&r.id) == Some(&key) {
                self.waiting.remove(&r.id);
            }
            self.released_ts = self.released_ts.max(ts);
            self.stats.with_recorded_response += u64::from(r.recorded_status.is_some());
            out.push(r);
        }
    }
}

/// FNV-1a, 64 bits: a published fixed hash for node names (std's hashers may change).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A stored message with ids unique across the nodes and capture runs a recording gathers
/// (each recorder numbers its own messages and connections from 1), and the same on every
/// read and every agent, so `--sample` and `--shard` choose the same units everywhere.
pub fn from_stored(stored: StoredMessage) -> HttpMessage {
    let scope = stable_hash(fnv1a(&stored.meta.node) ^ stable_hash(stored.meta.run));
    // Bijective within a scope (xor, then a bijective mix): ids of one run never collide.
    let global = |id: u64| stable_hash(scope ^ id);
    let mut m = stored.to_http();
    m.id = global(m.id);
    m.request_id = m.request_id.map(global);
    m.conn_id = global(m.conn_id);
    m
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
            version: HttpVersion::Http11,
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

    fn ok(status: u16) -> MessageKind {
        MessageKind::Response { status }
    }

    /// Streams `messages` through a look-ahead; every request handed on, and the stats.
    fn stream(
        messages: Vec<HttpMessage>,
        lookahead: Lookahead,
    ) -> (Vec<ReplayRequest>, SourceStats) {
        let mut s = RequestStream::new(lookahead);
        let mut out = Vec::new();
        for m in messages {
            s.push(m, &mut out);
            assert!(s.waiting_len() <= lookahead.requests, "look-ahead overrun");
        }
        s.finish(&mut out);
        assert!(s.waiting.is_empty() && s.waiting_len() == 0);
        (out, s.stats())
    }

    #[test]
    fn stored_ids_are_unique_across_nodes_and_runs_and_the_same_on_every_read() {
        let stored = |node: &str, run: u64, m: HttpMessage| StoredMessage {
            meta: crate::store::meta_for(&m, node, run, &["r".to_string()]),
            bytes: m.bytes.clone(),
        };
        let read = || {
            vec![
                stored("a", 7, msg(1, 1, 10, get("/a"), None)),
                stored("b", 7, msg(1, 1, 11, get("/b"), None)),
                stored("b", 7, msg(2, 1, 12, ok(500), Some(1))),
                stored("a", 7, msg(2, 1, 13, ok(200), Some(1))),
                stored("a", 8, msg(1, 1, 14, get("/c"), None)),
            ]
            .into_iter()
            .map(from_stored)
            .collect::<Vec<_>>()
        };
        let (requests, _) = stream(read(), Lookahead::default());
        let got: Vec<(&str, Option<u16>)> = requests
            .iter()
            .map(|r| (r.uri.as_str(), r.recorded_status))
            .collect();
        assert_eq!(
            got,
            vec![("/a", Some(200)), ("/b", Some(500)), ("/c", None)]
        );
        let conns: std::collections::HashSet<u64> = requests.iter().map(|r| r.conn).collect();
        assert_eq!(conns.len(), 3, "same numbers, three nodes or runs");
        assert_eq!(stream(read(), Lookahead::default()).0, requests);
    }

    #[test]
    fn keeps_complete_requests_in_capture_order_with_final_statuses() {
        let mut incomplete = msg(5, 3, 15, get("/cut"), None);
        incomplete.complete = false;
        let messages = vec![
            msg(3, 2, 20, get("/b"), None),
            msg(1, 1, 10, get("/a"), None),
            msg(2, 1, 11, ok(100), Some(1)),
            msg(4, 1, 12, ok(201), Some(1)),
            incomplete,
            msg(6, 2, 21, ok(404), Some(3)),
            msg(7, 4, 20, get("/same-time-later"), None),
        ];
        let (requests, stats) = stream(messages, Lookahead::default());
        let uris: Vec<&str> = requests.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(uris, vec!["/a", "/b", "/same-time-later"]);
        let statuses: Vec<Option<u16>> = requests.iter().map(|r| r.recorded_status).collect();
        assert_eq!(statuses, vec![Some(201), Some(404), None]);
        assert_eq!(requests[0].bytes, Bytes::from("message 1"));
        assert_eq!(
            stats,
            SourceStats {
                messages: 7,
                requests: 3,
                incomplete_skipped: 1,
                with_recorded_response: 2,
                responses_unpaired: 0,
                out_of_order: 0,
            }
        );
    }

    #[test]
    fn responses_are_kept_for_diff_only_when_asked_with_the_recorded_latency() {
        let messages = || {
            let mut response = msg(2, 1, 10_000, ok(200), Some(1));
            response.last_ts = Timestamp(12_500);
            vec![msg(1, 1, 10_000, get("/a"), None), response]
        };
        let (plain, _) = stream(messages(), Lookahead::default());
        assert_eq!(plain[0].recorded_response, None);
        assert_eq!(plain[0].recorded_latency, Some(Duration::from_nanos(2_500)));
        let mut s = RequestStream::new(Lookahead::default()).keeping_responses();
        let mut out = Vec::new();
        for m in messages() {
            s.push(m, &mut out);
        }
        s.finish(&mut out);
        assert_eq!(out[0].recorded_response, Some(Bytes::from("message 2")));
    }

    #[test]
    fn the_look_ahead_bounds_what_waits_and_says_what_it_cost() {
        // Two requests wait at most: /a goes on when /c arrives, so its late response is
        // unpaired; /late, captured before /c was handed on, is out of order.
        let messages = vec![
            msg(1, 1, 10, get("/a"), None),
            msg(2, 2, 20, get("/b"), None),
            msg(3, 3, 30, get("/c"), None),
            msg(4, 1, 31, ok(200), Some(1)),
            msg(5, 4, 40, get("/d"), None),
            msg(6, 5, 5, get("/late"), None),
        ];
        let lookahead = Lookahead {
            time: Duration::from_secs(60),
            requests: 2,
        };
        let (requests, stats) = stream(messages, lookahead);
        let uris: Vec<&str> = requests.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(uris, vec!["/a", "/b", "/late", "/c", "/d"]);
        assert_eq!(requests[0].recorded_status, None);
        assert_eq!((stats.responses_unpaired, stats.out_of_order), (1, 1));
    }

    #[test]
    fn requests_wait_no_longer_than_the_look_ahead_time() {
        let second = 1_000_000_000;
        let lookahead = Lookahead {
            time: Duration::from_secs(5),
            requests: 1000,
        };
        let mut s = RequestStream::new(lookahead);
        let mut out = Vec::new();
        s.push(msg(1, 1, 10 * second, get("/a"), None), &mut out);
        s.push(msg(2, 2, 14 * second, get("/b"), None), &mut out);
        assert!(out.is_empty());
        s.push(msg(3, 3, 16 * second, get("/c"), None), &mut out);
        assert_eq!(
            out.len(),
            1,
            "/a is more than 5 s older than the newest message"
        );
        s.push(msg(4, 2, 16 * second, ok(204), Some(2)), &mut out);
        s.finish(&mut out);
        assert_eq!(out[1].recorded_status, Some(204));
        assert_eq!(out.len(), 3);
    }

    /// The look-ahead as one sorted list, the plainest form of its rule: what the deque and
    /// its late side must hand on, request for request. (id, recorded status) in order.
    fn one_sorted_list(messages: &[HttpMessage], lookahead: Lookahead) -> Vec<(u64, Option<u16>)> {
        let mut pending: Vec<(PendingKey, u64, Option<u16>)> = Vec::new();
        let mut waiting: HashMap<u64, PendingKey> = HashMap::new();
        let (mut arrivals, mut newest, mut out) = (0, 0, Vec::new());
        let release = |all: bool,
                       newest: u64,
                       pending: &mut Vec<(PendingKey, u64, Option<u16>)>,
                       waiting: &mut HashMap<u64, PendingKey>,
                       out: &mut Vec<(u64, Option<u16>)>| {
            let horizon = newest.saturating_sub(lookahead.time.as_nanos() as u64);
            while let Some(&(key, id, status)) = pending.first() {
                if !(all || pending.len() > lookahead.requests || key.0 < horizon) {
                    break;
                }
                pending.remove(0);
                if waiting.get(&id) == Some(&key) {
                    waiting.remove(&id);
                }
                out.push((id, status));
            }
        };
        for m in messages {
            let ts = m.first_ts.as_nanos();
            newest = newest.max(ts);
            match &m.kind {
                MessageKind::Request { .. } => {
                    arrivals += 1;
                    let key = (ts, arrivals);
                    waiting.insert(m.id, key);
                    let at = pending.partition_point(|(k, ..)| *k < key);
                    pending.insert(at, (key, m.id, None));
                }
                MessageKind::Response { status } if !(100..200).contains(status) => {
                    if let Some(key) = m.request_id.and_then(|id| waiting.remove(&id))
                        && let Some(entry) = pending.iter_mut().find(|(k, ..)| *k == key)
                    {
                        entry.2 = Some(*status);
                    }
                }
                MessageKind::Response { .. } => {}
            }
            release(false, newest, &mut pending, &mut waiting, &mut out);
        }
        release(true, newest, &mut pending, &mut waiting, &mut out);
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        #[test]
        fn out_of_order_requests_come_out_as_one_sorted_list_gives_them(
            steps in proptest::collection::vec((proptest::bool::weighted(0.6), 0u64..40, 0usize..40), 0..80),
            time in 0u64..30,
            requests in 1usize..12,
        ) {
            let lookahead = Lookahead { time: Duration::from_nanos(time), requests };
            let mut messages = Vec::new();
            let mut request_ids = Vec::new();
            for (i, &(is_request, ts, pick)) in steps.iter().enumerate() {
                let id = i as u64 + 1;
                if is_request || request_ids.is_empty() {
                    request_ids.push(id);
                    messages.push(msg(id, id, ts, get("/"), None));
                } else {
                    let answers = request_ids[pick % request_ids.len()];
                    let status = [100, 200, 404, 500][pick % 4];
                    messages.push(msg(id, answers, ts, ok(status), Some(answers)));
                }
            }
            let want = one_sorted_list(&messages, lookahead);
            let (got, _) = stream(messages, lookahead);
            let got: Vec<(u64, Option<u16>)> =
                got.iter().map(|r| (r.id, r.recorded_status)).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
