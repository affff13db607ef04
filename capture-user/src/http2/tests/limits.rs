//! Limits, losses and error paths: each loss counter, gaps, close, invalid HPACK.

use super::super::frame::{flag, kind};
use super::super::{H2Config, H2Start};
use super::support::*;
use super::unit::{get_request, preface_run, response};
use crate::counters::CounterTable;

#[test]
fn pad_length_beyond_frame_is_a_bad_frame() {
    let mut wire = Wire::new();
    wire.headers(ToServer, 1, &get_request("/").fields, false);
    wire.raw(
        ToServer,
        frame(kind::DATA, flag::PADDED | flag::END_STREAM, 1, &[9, 1, 2]),
    );
    let run = preface_run(&wire);
    assert_eq!(run.stats.bad_frames, 1);
    assert_eq!(run.messages.len(), 1);
    assert!(
        !run.messages[0].complete,
        "the ignored frame's bytes are missing"
    );
}

#[test]
fn rst_stream_mid_body_emits_incomplete() {
    let mut wire = Wire::new();
    wire.message(ToServer, 1, &get_request("/"));
    wire.headers(ToClient, 1, &response("200", b"").fields, false);
    wire.data(ToClient, 1, b"partial", false);
    wire.raw(ToServer, frame(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]));
    let run = preface_run(&wire);
    let reply = &run.messages[1];
    assert!(!reply.complete && !reply.ended);
    assert_eq!(reply.body_len, 7);
    assert_eq!(run.stats.streams_reset, 1);
    assert_eq!(run.stats.incomplete_messages, 1);
    assert_eq!(run.framer.tracked_streams(), 0);
}

#[test]
fn size_update_over_the_advertised_limit_loses_the_context() {
    let mut wire = Wire::new();
    let mut block = vec![0x3f, 0xe1, 0x3f]; // 8192 > default 4096
    block.extend(wire.encode(ToServer, &get_request("/").fields));
    wire.block(ToServer, 1, &block, true);
    let run = preface_run(&wire);
    assert!(run.messages.is_empty());
    assert_eq!(run.stats.undecodable_header_blocks, 1);
    assert_eq!(run.stats.undecodable_messages, 1);
    assert_eq!(
        run.framer.hpack_knowledge(ToServer),
        super::super::hpack::Knowledge::Lost
    );
}

#[test]
fn header_list_too_large() {
    let config = H2Config {
        max_header_list_bytes: 100,
        ..H2Config::default()
    };
    let mut wire = Wire::new();
    let big = Message::new(
        fields(&[(":method", "GET"), (":path", "/"), ("x", &"a".repeat(200))]),
        b"",
        None,
    );
    wire.message(ToServer, 1, &big);
    let run = Run::whole(H2Start::Preface, config, &wire.events);
    assert!(run.messages.is_empty());
    assert_eq!(run.stats.header_list_too_large, 1);
}

#[test]
fn body_too_large_is_cut_but_counted() {
    let config = H2Config {
        max_message_bytes: 100,
        ..H2Config::default()
    };
    let mut wire = Wire::new();
    wire.message(
        ToServer,
        1,
        &Message::new(get_request("/").fields, &[b'x'; 500], None),
    );
    let run = Run::whole(H2Start::Preface, config, &wire.events);
    let message = &run.messages[0];
    assert_eq!(message.bytes.len(), 100);
    assert_eq!(message.body_len, 500);
    assert!(message.ended && !message.complete);
    assert_eq!(run.stats.body_too_large, 1);
}

#[test]
fn streams_in_flight_together_share_the_connection_budget() {
    let config = H2Config {
        max_connection_bytes: 1000,
        ..H2Config::default()
    };
    let mut wire = Wire::new();
    // Three requests whose bodies arrive interleaved: together they pass the budget.
    for id in [1, 3, 5] {
        wire.headers(ToServer, id, &get_request("/").fields, false);
    }
    for id in [1, 3, 5] {
        wire.data(ToServer, id, &[b'x'; 400], false);
    }
    for id in [1, 3, 5] {
        wire.data(ToServer, id, b"", true);
    }
    let run = Run::whole(H2Start::Preface, config, &wire.events);
    assert_eq!(run.messages.len(), 3);
    assert!(run.messages.iter().all(|m| m.body_len == 400 && m.ended));
    let held: usize = run.messages.iter().map(|m| m.bytes.len()).sum();
    assert!(held <= 1000 + 3 * 100, "held {held} bytes");
    assert_eq!(run.stats.connection_bytes_cap_hits, 1);
    assert_eq!(run.stats.body_too_large, 0);
    assert!(!run.messages[2].complete && run.messages[0].complete);
}

#[test]
fn too_many_streams() {
    let config = H2Config {
        max_streams: 1,
        ..H2Config::default()
    };
    let mut wire = Wire::new();
    wire.headers(ToServer, 1, &get_request("/a").fields, true);
    wire.headers(ToServer, 3, &get_request("/b").fields, true);
    wire.message(ToClient, 1, &response("200", b""));
    let run = Run::whole(H2Start::Preface, config, &wire.events);
    assert_eq!(run.stats.too_many_streams, 1);
    assert_eq!(run.stats.requests, 1);
    assert_eq!(run.stats.responses, 1);
}

#[test]
fn frame_too_large_resyncs() {
    let mut wire = Wire::new();
    wire.raw(ToServer, frame(kind::DATA, 0, 1, &vec![0; 20_000]));
    wire.message(
        ToServer,
        3,
        &Message::new(
            fields(&[(":method", "GET"), (":path", "/after")]),
            b"",
            None,
        ),
    );
    let run = preface_run(&wire);
    assert_eq!(run.stats.frame_too_large, 1, "{:?}", run.stats);
    assert!(run.stats.resync_skipped_bytes > 0);
    // The request after it uses only static/literal representations: decodable.
    assert_eq!(run.stats.requests, 1, "{:?}", run.stats);
}

#[test]
fn bad_preface_resyncs() {
    let mut wire = Wire::empty();
    let mut start = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    start.extend(settings(&[]));
    wire.raw(ToServer, start);
    wire.message(
        ToServer,
        1,
        &Message::new(fields(&[(":method", "GET"), (":path", "/x")]), b"", None),
    );
    let run = preface_run(&wire);
    assert_eq!(run.stats.bad_preface, 1);
    assert_eq!(run.stats.resync_skipped_bytes, 18);
    assert_eq!(run.stats.requests, 1);
}

#[test]
fn malformed_headers_are_not_emitted() {
    let mut wire = Wire::new();
    wire.message(
        ToServer,
        1,
        &Message::new(
            fields(&[(":method", "GET"), (":path", "/"), ("Upper", "x")]),
            b"",
            None,
        ),
    );
    wire.message(
        ToServer,
        3,
        &Message::new(fields(&[(":path", "/"), ("a", "b")]), b"", None),
    );
    wire.message(
        ToServer,
        5,
        &Message::new(
            fields(&[(":method", "GET"), (":path", "/"), ("a", "b\r\nc")]),
            b"",
            None,
        ),
    );
    wire.message(
        ToClient,
        1,
        &Message::new(fields(&[(":status", "2xx")]), b"", None),
    );
    let run = preface_run(&wire);
    assert!(run.messages.is_empty());
    assert_eq!(run.stats.malformed_headers, 4);
}

#[test]
fn gap_emits_incomplete_and_resyncs() {
    let mut wire = Wire::new();
    wire.headers(ToServer, 1, &get_request("/first").fields, false);
    wire.data(ToServer, 1, b"part", false);
    let mut run = Run::new(H2Start::Preface, H2Config::default());
    run.feed(&wire.events);
    run.gap(ToServer);
    assert_eq!(run.messages.len(), 1);
    assert!(!run.messages[0].complete);
    // After the gap: the tail of a frame, then a request using literals only.
    run.feed_one(ToServer, &[1, 2, 3, 4, 5]);
    let mut after = Wire::empty();
    let request = Message::new(
        fields(&[(":method", "GET"), (":path", "/second"), ("x-new", "1")]),
        b"",
        None,
    );
    after.message(ToServer, 3, &request);
    after.raw(ToServer, settings(&[]));
    run.feed(&after.events);
    run.close();
    assert_eq!(run.stats.resync_skipped_bytes, 5);
    assert_eq!(run.messages.len(), 2);
    request.assert_matches(&run.messages[1]);
    assert_eq!(run.stats.incomplete_messages, 1);
}

#[test]
fn close_emits_everything_open() {
    let mut wire = Wire::new();
    wire.headers(ToServer, 1, &get_request("/").fields, false);
    wire.headers(ToServer, 3, &get_request("/b").fields, true);
    wire.headers(ToClient, 3, &response("200", b"").fields, false);
    let run = preface_run(&wire);
    assert_eq!(run.messages.len(), 3);
    assert_eq!(run.messages.iter().filter(|m| !m.complete).count(), 2);
    assert_eq!(run.stats.incomplete_messages, 2);
    assert_eq!(run.framer.tracked_streams(), 0);
}

#[test]
fn invalid_hpack_never_emits() {
    let blocks: [&[u8]; 5] = [
        &[0x80],                                     // index 0
        &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // integer overflow
        &[0xbf, 0x01],                               // index beyond a known table
        &[0x82, 0x44, 0x05, b'/'],                   // truncated string
        &[0x82, 0x84, 0x41, 0x81, 0xff],             // Huffman EOS padding too long
    ];
    for block in blocks {
        let mut wire = Wire::new();
        wire.block(ToServer, 1, block, true);
        let run = preface_run(&wire);
        assert!(run.messages.is_empty(), "{block:?}");
        assert_eq!(run.stats.undecodable_header_blocks, 1, "{block:?}");
    }
}

#[test]
fn stats_rows_and_add() {
    let mut total = super::super::H2Stats::default();
    let one = super::super::H2Stats {
        requests: 2,
        bad_frames: 1,
        ..Default::default()
    };
    total.add(&one);
    total.add(&one);
    let pairs = total.pairs();
    assert_eq!(pairs.len(), 18);
    assert_eq!(pairs[0], ("requests", 4));
    assert!(total.losses().contains(&("bad_frames", 2)));
    assert_eq!(pairs.last().unwrap().0, "pushed_streams_ignored");
}

#[test]
fn counter_table_lists_every_field_in_order_and_marks_the_losses() {
    let mut stats = super::super::H2Stats::default();
    let mut next = 0;
    for (_, field, _) in <super::super::H2Stats as CounterTable>::COUNTERS {
        next += 1;
        *field(&mut stats) = next;
    }
    let losses = [
        "incomplete_messages",
        "undecodable_header_blocks",
        "undecodable_messages",
        "malformed_headers",
        "header_list_too_large",
        "body_too_large",
        "connection_bytes_cap_hits",
        "too_many_streams",
        "bad_frames",
        "bad_preface",
        "frame_too_large",
        "midstream_streams_skipped",
    ];
    crate::counters::check_table(stats, &losses);
}
