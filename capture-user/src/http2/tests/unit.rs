//! Unit tests over hand-built conversations.

use super::super::frame::{flag, kind};
use super::super::{H2Config, H2Start, parse_stored};
use super::support::*;
use crate::counters::CounterTable;
use crate::message::MessageKind;
use crate::reassembly::FlowDir;

pub(super) fn get_request(path: &str) -> Message {
    let head = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "example.com"),
        ("user-agent", "test"),
    ];
    Message::new(fields(&head), b"", None)
}

pub(super) fn response(status: &str, body: &[u8]) -> Message {
    Message::new(
        fields(&[(":status", status), ("content-type", "text/plain")]),
        body,
        None,
    )
}

pub(super) fn preface_run(wire: &Wire) -> Run {
    Run::whole(H2Start::Preface, H2Config::default(), &wire.events)
}

#[test]
pub(super) fn get_request_and_response() {
    let mut wire = Wire::new();
    wire.message(ToServer, 1, &get_request("/"));
    wire.message(ToClient, 1, &response("200", b"hello"));
    let run = preface_run(&wire);
    assert_eq!(run.messages.len(), 2);
    let (request, response_msg) = (&run.messages[0], &run.messages[1]);
    assert_eq!(
        &request.bytes[..],
        b"GET / HTTP/2\r\n:scheme: http\r\n:authority: example.com\r\nuser-agent: test\r\n\r\n"
    );
    assert_eq!(
        &response_msg.bytes[..],
        b"HTTP/2 200\r\ncontent-type: text/plain\r\n\r\nhello"
    );
    assert_eq!(
        request.kind,
        MessageKind::Request {
            method: "GET".into(),
            uri: "/".into()
        }
    );
    assert_eq!(response_msg.kind, MessageKind::Response { status: 200 });
    assert_eq!(response_msg.request_id, Some(request.id));
    assert!(request.complete && response_msg.complete);
    assert_eq!(run.stats.requests, 1);
    assert_eq!(run.stats.responses, 1);
    assert!(run.stats.losses().iter().all(|(_, n)| *n == 0));
    assert_eq!(
        run.framer.tracked_streams(),
        0,
        "finished streams are forgotten"
    );
}

#[test]
fn post_with_large_body_over_many_frames() {
    let body: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    let head = fields(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/upload"),
        (":authority", "h"),
    ]);
    let request = Message::new(head, &body, None);
    let mut wire = Wire::new();
    wire.style.data_chunk = 5000;
    wire.message(ToServer, 1, &request);
    wire.message(ToClient, 1, &response("201", b""));
    let run = preface_run(&wire);
    request.assert_matches(&run.messages[0]);
    let stored = parse_stored(&run.messages[0].bytes, run.messages[0].body_len).unwrap();
    assert_eq!(stored.body, &body[..]);
}

#[test]
fn padding_and_priority_are_removed() {
    let mut wire = Wire::new();
    wire.style.pad = Some(7);
    let request = Message::new(get_request("/p").fields, b"abc", None);
    wire.message(ToServer, 1, &request);
    let block = wire.encode(ToClient, &fields(&[(":status", "200")]));
    let mut payload = vec![3];
    payload.extend_from_slice(&[0x80, 0, 0, 1, 16]);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0, 0, 0]);
    let flags = flag::PADDED | flag::PRIORITY | flag::END_HEADERS | flag::END_STREAM;
    wire.raw(ToClient, frame(kind::HEADERS, flags, 1, &payload));
    let run = preface_run(&wire);
    request.assert_matches(&run.messages[0]);
    assert_eq!(&run.messages[1].bytes[..], b"HTTP/2 200\r\n\r\n");
}

#[test]
fn continuation_frames_join_the_block() {
    let mut wire = Wire::new();
    wire.style.block_split = 5;
    let request = get_request("/continued");
    wire.message(ToServer, 1, &request);
    let run = preface_run(&wire);
    request.assert_matches(&run.messages[0]);
}

#[test]
fn grpc_trailers_follow_the_body() {
    let grpc = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/pkg.Svc/Call"),
        (":authority", "h"),
        ("content-type", "application/grpc"),
    ];
    let request = Message::new(fields(&grpc), b"\0\0\0\0\x02hi", None);
    let reply = Message::new(
        fields(&[(":status", "200"), ("content-type", "application/grpc")]),
        b"\0\0\0\0\x03abc",
        Some(fields(&[("grpc-status", "0"), ("grpc-message", "ok")])),
    );
    let mut wire = Wire::new();
    wire.message(ToServer, 1, &request);
    wire.message(ToClient, 1, &reply);
    let run = preface_run(&wire);
    request.assert_matches(&run.messages[0]);
    reply.assert_matches(&run.messages[1]);
    let stored = parse_stored(&run.messages[1].bytes, run.messages[1].body_len).unwrap();
    assert_eq!(stored.body, b"\0\0\0\0\x03abc");
    assert_eq!(
        stored.trailers,
        vec![
            (&b"grpc-status"[..], &b"0"[..]),
            (&b"grpc-message"[..], &b"ok"[..])
        ]
    );
}

#[test]
fn trailers_only_response_is_just_headers() {
    let mut wire = Wire::new();
    wire.message(ToServer, 1, &get_request("/"));
    let only = Message::new(
        fields(&[(":status", "200"), ("grpc-status", "12")]),
        b"",
        None,
    );
    wire.message(ToClient, 1, &only);
    let run = preface_run(&wire);
    assert_eq!(
        &run.messages[1].bytes[..],
        b"HTTP/2 200\r\ngrpc-status: 12\r\n\r\n"
    );
    assert!(run.messages[1].complete);
}

#[test]
fn interim_responses_are_skipped() {
    let mut wire = Wire::new();
    wire.headers(ToServer, 1, &get_request("/").fields, false);
    wire.headers(ToClient, 1, &fields(&[(":status", "100")]), false);
    wire.data(ToServer, 1, b"body", true);
    wire.message(ToClient, 1, &response("200", b"done"));
    let run = preface_run(&wire);
    assert_eq!(run.stats.interim_responses, 1);
    let responses = run.by_dir(ToClient);
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].kind, MessageKind::Response { status: 200 });
}

#[test]
fn push_promise_is_decoded_for_hpack_sync_but_not_emitted() {
    let mut wire = Wire::new();
    wire.message(ToServer, 1, &get_request("/"));
    // The promise inserts x-pushed into the server's table (literal name).
    let promised = fields(&[
        (":method", "GET"),
        (":path", "/style.css"),
        ("x-pushed", "yes"),
    ]);
    let block = wire.encode(ToClient, &promised);
    let mut payload = 2u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&block);
    wire.raw(
        ToClient,
        frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &payload),
    );
    // This response refers to the entry the promise inserted.
    let reply = Message::new(
        fields(&[(":status", "200"), ("x-pushed", "yes")]),
        b"ok",
        None,
    );
    wire.message(ToClient, 1, &reply);
    wire.message(ToClient, 2, &response("200", b"body{}"));
    let run = preface_run(&wire);
    assert_eq!(run.stats.pushed_streams_ignored, 1);
    let responses = run.by_dir(ToClient);
    assert_eq!(responses.len(), 1);
    reply.assert_matches(responses[0]);
}

#[test]
fn settings_table_size_and_size_update() {
    let mut wire = Wire::new();
    wire.raw(ToClient, settings(&[(0x1, 8192)]));
    wire.encoder(ToServer).set_max_table_size(8192);
    let big = "v".repeat(5000);
    let request = Message::new(
        fields(&[(":method", "GET"), (":path", "/"), ("x-big", &big)]),
        b"",
        None,
    );
    let mut block = vec![0x3f, 0xe1, 0x3f]; // size update to 8192 (31 + 8161)
    block.extend(wire.encode(ToServer, &request.fields));
    wire.block(ToServer, 1, &block, true);
    // Second request refers to x-big, which only fits in an 8192-byte table.
    let again = wire.encode(ToServer, &request.fields);
    assert!(again.len() < 10, "indexed reference");
    wire.block(ToServer, 3, &again, true);
    let run = preface_run(&wire);
    assert_eq!(run.messages.len(), 2);
    request.assert_matches(&run.messages[0]);
    request.assert_matches(&run.messages[1]);
}

#[test]
fn interleaved_streams_with_responses_out_of_order() {
    let mut wire = Wire::new();
    for id in [1, 3, 5] {
        wire.headers(ToServer, id, &get_request(&format!("/s{id}")).fields, true);
    }
    for id in [5, 1, 3] {
        let head = fields(&[(":status", "200"), ("x-stream", &id.to_string())]);
        wire.headers(ToClient, id, &head, false);
    }
    for round in 0..3 {
        for id in [3, 5, 1] {
            wire.data(
                ToClient,
                id,
                format!("{id}-{round};").as_bytes(),
                round == 2,
            );
        }
    }
    let run = preface_run(&wire);
    let requests = run.by_dir(ToServer);
    let responses = run.by_dir(ToClient);
    assert_eq!((requests.len(), responses.len()), (3, 3));
    for response_msg in responses {
        let stored = parse_stored(&response_msg.bytes, response_msg.body_len).unwrap();
        let stream = std::str::from_utf8(stored.headers[0].1).unwrap();
        let request = requests
            .iter()
            .find(|r| Some(r.id) == response_msg.request_id)
            .unwrap();
        assert!(
            request
                .bytes
                .starts_with(format!("GET /s{stream} ").as_bytes())
        );
        assert_eq!(
            stored.body,
            format!("{stream}-0;{stream}-1;{stream}-2;").as_bytes()
        );
    }
}

#[test]
fn upgraded_response_links_to_the_http1_request() {
    let mut wire = Wire::new();
    wire.message(ToClient, 1, &response("200", b"upgraded"));
    let run = Run::whole(
        H2Start::Upgraded { request_id: 42 },
        H2Config::default(),
        &wire.events,
    );
    assert_eq!(run.messages.len(), 1);
    assert_eq!(run.messages[0].request_id, Some(42));
    assert!(run.messages[0].complete);
}

fn hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// RFC 7541 Appendix C.3 (plain) and C.4 (Huffman) request sequences.
#[test]
fn rfc7541_appendix_c_requests() {
    let plain = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    let huffman = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];
    let expected: [&[u8]; 3] = [
        b"GET / HTTP/2\r\n:scheme: http\r\n:authority: www.example.com\r\n\r\n",
        b"GET / HTTP/2\r\n:scheme: http\r\n:authority: www.example.com\r\ncache-control: no-cache\r\n\r\n",
        b"GET /index.html HTTP/2\r\n:scheme: https\r\n:authority: www.example.com\r\ncustom-key: custom-value\r\n\r\n",
    ];
    for blocks in [plain, huffman] {
        let mut wire = Wire::new();
        for (i, block) in blocks.iter().enumerate() {
            wire.block(ToServer, 2 * i as u32 + 1, &hex(block), true);
        }
        let run = preface_run(&wire);
        let stored: Vec<&[u8]> = run.messages.iter().map(|m| &m.bytes[..]).collect();
        assert_eq!(stored, expected);
    }
}

#[test]
fn segmentation_does_not_matter_for_a_simple_exchange() {
    let mut wire = Wire::new();
    wire.message(ToServer, 1, &get_request("/"));
    wire.message(ToClient, 1, &response("200", b"hello"));
    let whole = preface_run(&wire);
    let all: Vec<(FlowDir, Vec<u8>)> = wire
        .events
        .iter()
        .flat_map(|(dir, bytes)| bytes.iter().map(|b| (*dir, vec![*b])))
        .collect();
    let bytewise = Run::whole(H2Start::Preface, H2Config::default(), &all);
    let strip = |run: &Run| {
        run.messages
            .iter()
            .map(|m| (m.bytes.clone(), m.complete))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&whole), strip(&bytewise));
}
