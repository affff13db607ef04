//! Unit tests of the framer, fed literal wire bytes: pairing, body framing, resync, caps.

use super::*;

struct Harness {
    framer: ConnectionFramer,
    ids: IdAllocator,
    stats: HttpStats,
    out: Vec<FramedMessage>,
    ts: u64,
}

impl Harness {
    fn new() -> Self {
        Self::with(HttpConfig::default(), false)
    }
    fn with(config: HttpConfig, midstream: bool) -> Self {
        Self {
            framer: ConnectionFramer::new(config, midstream),
            ids: IdAllocator::default(),
            stats: HttpStats::default(),
            out: Vec::new(),
            ts: 0,
        }
    }
    fn send(&mut self, dir: FlowDir, bytes: &[u8]) -> &mut Self {
        self.ts += 1;
        self.framer.data(
            dir,
            Timestamp(self.ts),
            Bytes::copy_from_slice(bytes),
            &mut self.ids,
            &mut self.stats,
            &mut self.out,
        );
        self
    }
    fn req(&mut self, bytes: &[u8]) -> &mut Self {
        self.send(FlowDir::ToServer, bytes)
    }
    fn resp(&mut self, bytes: &[u8]) -> &mut Self {
        self.send(FlowDir::ToClient, bytes)
    }
    fn close(&mut self) -> &mut Self {
        self.framer.close(
            Timestamp(999),
            &mut self.ids,
            &mut self.stats,
            &mut self.out,
        );
        self
    }
    fn bytes(&self) -> Vec<&[u8]> {
        self.out.iter().map(|m| &m.bytes[..]).collect()
    }
}

#[test]
fn keep_alive_get_and_content_length_response_are_paired() {
    let mut h = Harness::new();
    h.req(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(h.out.len(), 2);
    assert_eq!(
        h.out[0].kind,
        MessageKind::Request {
            method: "GET".into(),
            uri: "/a".into()
        }
    );
    assert_eq!(h.out[1].kind, MessageKind::Response { status: 200 });
    assert_eq!(h.out[1].request_id, Some(h.out[0].id));
    assert_eq!(h.out[1].body_len, 5);
    assert!(h.out.iter().all(|m| m.complete));
}

#[test]
fn message_split_at_every_byte_gives_the_same_bytes() {
    let wire: &[u8] = b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.1\r\n\r\n";
    let mut h = Harness::new();
    for b in wire {
        h.req(&[*b]);
    }
    assert_eq!(
        h.bytes(),
        vec![
            &b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"GET /q HTTP/1.1\r\n\r\n"
        ]
    );
}

#[test]
fn chunked_body_with_extensions_and_trailers_is_one_message() {
    let body: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n";
    let mut h = Harness::new();
    h.req(b"GET / HTTP/1.1\r\n\r\n").resp(body);
    assert_eq!(h.out[1].bytes, body);
    assert_eq!(h.out[1].body_len, 9);
    assert!(h.out[1].complete);
}

#[test]
fn head_204_304_and_1xx_have_no_body() {
    let mut h = Harness::new();
    h.req(b"HEAD / HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
        .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        .resp(b"HTTP/1.1 204 No Content\r\n\r\n")
        .resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n");
    let statuses: Vec<_> = h
        .out
        .iter()
        .filter(|m| m.dir == FlowDir::ToClient)
        .map(|m| (m.body_len, m.complete))
        .collect();
    assert_eq!(statuses, vec![(0, true), (0, true), (0, true)]);
}

#[test]
fn expect_100_continue_pairs_both_responses_with_the_request() {
    let mut h = Harness::new();
    h.req(b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .resp(b"HTTP/1.1 100 Continue\r\n\r\n")
        .req(b"data")
        .resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let req = h.out.iter().find(|m| m.dir == FlowDir::ToServer).unwrap();
    let responses: Vec<_> = h
        .out
        .iter()
        .filter(|m| m.dir == FlowDir::ToClient)
        .collect();
    assert_eq!(responses.len(), 2);
    assert!(responses.iter().all(|r| r.request_id == Some(req.id)));
    assert_eq!(req.body_len, 4);
    assert_eq!(h.stats.interim_responses, 1);
}

#[test]
fn pipelined_requests_pair_in_order() {
    let mut h = Harness::new();
    h.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\n2HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3");
    let reqs: Vec<_> = h
        .out
        .iter()
        .filter(|m| m.dir == FlowDir::ToServer)
        .map(|m| m.id)
        .collect();
    let pairs: Vec<_> = h
        .out
        .iter()
        .filter(|m| m.dir == FlowDir::ToClient)
        .map(|m| m.request_id.unwrap())
        .collect();
    assert_eq!(reqs, pairs);
}

#[test]
fn close_delimited_response_completes_at_close() {
    let mut h = Harness::new();
    h.req(b"GET / HTTP/1.0\r\n\r\n")
        .resp(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        .close();
    let resp = h.out.iter().find(|m| m.dir == FlowDir::ToClient).unwrap();
    assert!(resp.complete);
    assert_eq!(resp.body_len, 9);
    assert_eq!(resp.version, HttpVersion::Http10);
}

#[test]
fn upgrade_stops_framing_and_is_counted() {
    let mut h = Harness::new();
    h.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        .resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
        .req(b"\x81\x85binary frame GET / HTTP/1.1\r\n\r\n");
    assert_eq!(h.out.len(), 2);
    assert_eq!(h.stats.upgrades, 1);
    assert!(h.stats.tunnel_bytes_ignored > 0);
}

#[test]
fn gap_marks_the_message_incomplete_and_framing_resyncs() {
    let mut h = Harness::new();
    h.req(b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\npartial");
    h.framer
        .gap(FlowDir::ToServer, Timestamp(5), &mut h.stats, &mut h.out);
    h.req(b"body rest that got lost\r\nGET /next HTTP/1.1\r\n\r\n");
    assert_eq!(h.out.len(), 2);
    assert!(!h.out[0].complete);
    assert_eq!(
        h.out[1].kind,
        MessageKind::Request {
            method: "GET".into(),
            uri: "/next".into()
        }
    );
    assert!(h.out[1].complete);
    assert!(h.stats.resync_skipped_bytes > 0);
}

#[test]
fn midstream_start_skips_to_the_first_message_start() {
    let mut h = Harness::with(HttpConfig::default(), true);
    h.resp(b"ail of an earlier body\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(h.out.len(), 1);
    assert_eq!(
        h.out[0].bytes,
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]
    );
    assert_eq!(h.stats.unpaired_responses, 1);
}

#[test]
fn oversized_headers_are_dropped_and_counted() {
    let mut h = Harness::with(
        HttpConfig {
            max_header_bytes: 64,
            ..HttpConfig::default()
        },
        false,
    );
    h.req(b"GET / HTTP/1.1\r\nX-Big: ");
    h.req(&[b'a'; 100]);
    h.req(b"\r\n\r\nGET /ok HTTP/1.1\r\n\r\n");
    assert_eq!(h.stats.header_too_large, 1);
    assert_eq!(h.out.len(), 1);
    assert_eq!(
        h.out[0].kind,
        MessageKind::Request {
            method: "GET".into(),
            uri: "/ok".into()
        }
    );
}

#[test]
fn conflicting_content_lengths_and_te_plus_cl_are_flagged() {
    let mut h = Harness::new();
    h.req(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd");
    assert_eq!(h.stats.ambiguous_length, 1);
    assert_eq!(h.stats.bad_framing, 1);
    assert!(!h.out[0].complete);
    let mut h = Harness::new();
    h.req(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(h.stats.ambiguous_length, 1);
    assert!(h.out[0].complete, "TE wins over CL");
}

#[test]
fn malformed_request_lines_servers_answer_are_still_recorded() {
    let mut h = Harness::new();
    h.req(b"OPTIONS HTTP/1.1\r\nHost: x\r\n\r\n")
        .resp(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        .req(b"GET /HTTP/1.1\r\n")
        .close();
    let requests: Vec<_> = h
        .out
        .iter()
        .filter(|m| m.dir == FlowDir::ToServer)
        .map(|m| (m.kind.clone(), m.complete))
        .collect();
    assert_eq!(
        requests,
        vec![
            (
                MessageKind::Request {
                    method: "OPTIONS".into(),
                    uri: "HTTP/1.1".into()
                },
                true
            ),
            (
                MessageKind::Request {
                    method: "GET".into(),
                    uri: "/HTTP/1.1".into()
                },
                false
            ),
        ]
    );
    assert_eq!(h.stats.lenient_heads, 1);
}

#[test]
fn overflowing_content_length_is_bad_framing_not_a_panic() {
    let mut h = Harness::new();
    h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nx");
    assert_eq!(h.stats.bad_framing, 1);
    let mut h = Harness::new();
    h.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n");
    assert_eq!(h.stats.bad_framing, 1);
}

#[test]
fn messages_over_the_size_cap_are_cut_and_marked_incomplete() {
    let mut h = Harness::with(
        HttpConfig {
            max_message_bytes: 50,
            ..HttpConfig::default()
        },
        false,
    );
    h.req(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
    h.req(&[b'z'; 100]);
    h.req(b"GET /after HTTP/1.1\r\n\r\n");
    assert_eq!(h.out.len(), 2);
    assert_eq!(h.out[0].bytes.len(), 50);
    assert!(!h.out[0].complete);
    assert_eq!(h.out[0].body_len, 100);
    assert_eq!(h.stats.body_too_large, 1);
    assert!(h.out[1].complete);
}

/// `(name, value)` of every field of a stats struct, in declaration order, from its Debug
/// output: what the counter table must list.
#[test]
fn counter_table_lists_every_field_in_order_and_marks_the_losses() {
    let stats = HttpStats {
        requests: 1,
        responses: 2,
        interim_responses: 3,
        incomplete_messages: 4,
        header_too_large: 5,
        bad_message_head: 6,
        bad_framing: 7,
        ambiguous_length: 8,
        body_too_large: 9,
        resync_skipped_bytes: 10,
        lenient_heads: 11,
        upgrades: 12,
        h2c_upgrades: 13,
        tunnel_bytes_ignored: 14,
        unpaired_responses: 15,
    };
    let losses = [
        "incomplete_messages",
        "header_too_large",
        "bad_message_head",
        "bad_framing",
        "body_too_large",
        "upgrades",
    ];
    crate::counters::check_table(stats, &losses);
}
