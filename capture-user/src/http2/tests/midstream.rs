//! Captures that start mid-connection: the HPACK tables' older entries are unknown,
//! and no emitted message may differ from the truth.

use std::collections::HashSet;

use super::super::hpack::Knowledge;
use super::super::{H2Config, H2Start};
use super::support::*;

/// Request `i` of the test connection.
fn request(i: usize) -> Message {
    let mut head = vec![(":method", "GET".to_string()), (":path", format!("/r{i}"))];
    let unique = format!("x-unique-{i}");
    match i % 3 {
        // References an entry inserted long before: undecodable mid-stream.
        0 => head.push(("x-session", "abc".to_string())),
        // A new entry, referenced again by request i + 3 (also i % 3 == 1).
        1 => head.push(("x-late", format!("{}", i / 30))),
        _ => {}
    }
    let mut fields: Fields = head.into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    fields.push((unique, "u".to_string()));
    Message::new(fields, b"", None)
}

fn reply(i: usize) -> Message {
    let head = vec![
        (":status".to_string(), "200".to_string()),
        (format!("x-stream-{i}"), i.to_string()),
        ("server".to_string(), "test".to_string()),
    ];
    Message::new(head, format!("body {i}").as_bytes(), None)
}

/// A connection of `count` exchanges; returns the events and the index of the first
/// event of each exchange. From exchange `reset_at` on, the client's encoder starts
/// each block with a size update to 0 (then back to 4096).
fn connection(count: usize, reset_at: usize) -> (Wire, Vec<usize>, HashSet<Vec<u8>>) {
    let mut wire = Wire::new();
    let mut starts = Vec::new();
    let mut truth = HashSet::new();
    for i in 0..count {
        starts.push(wire.events.len());
        let id = 2 * i as u32 + 1;
        let request = request(i);
        if i == reset_at {
            wire.encoder(ToServer).set_max_table_size(0);
            wire.encoder(ToServer).set_max_table_size(4096);
            let mut block = vec![0x20, 0x3f, 0xe1, 0x1f];
            block.extend(wire.encode(ToServer, &request.fields));
            wire.block(ToServer, id, &block, true);
        } else {
            wire.message(ToServer, id, &request);
        }
        wire.message(ToClient, id, &reply(i));
        truth.insert(request.stored());
        truth.insert(reply(i).stored());
    }
    (wire, starts, truth)
}

fn assert_all_true(run: &Run, truth: &HashSet<Vec<u8>>) {
    for message in &run.messages {
        assert!(
            truth.contains(&message.bytes[..]),
            "guessed: {:?}",
            String::from_utf8_lossy(&message.bytes)
        );
        assert!(message.complete);
    }
}

#[test]
fn midstream_capture_never_guesses() {
    let (wire, starts, truth) = connection(40, 30);
    let run = Run::whole(
        H2Start::Midstream,
        H2Config::default(),
        &wire.events[starts[12]..],
    );
    assert_all_true(&run, &truth);
    assert!(run.stats.undecodable_header_blocks > 0);
    let paths: HashSet<String> = run
        .by_dir(ToServer)
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.bytes)
                .split(' ')
                .nth(1)
                .unwrap()
                .to_string()
        })
        .collect();
    // x-session requests before the reset are undecodable.
    assert!(!paths.contains("/r12") && !paths.contains("/r27"));
    // Literal-only requests and those referencing entries inserted after the cut decode.
    assert!(paths.contains("/r14") && paths.contains("/r17"));
    // x-late=0 was inserted by request 1, long before the cut: request 13 refers to it.
    assert!(!paths.contains("/r13"));
    // After the size update to 0 everything decodes.
    for i in 30..40 {
        assert!(paths.contains(&format!("/r{i}")), "/r{i}");
    }
    assert_eq!(run.framer.hpack_knowledge(ToServer), Knowledge::Known);
    assert_eq!(
        run.stats.responses, 28,
        "responses use literals and static names only"
    );
}

#[test]
fn midstream_capture_starting_inside_frames() {
    let (wire, starts, truth) = connection(40, 30);
    for cut in [1, 5, 9, 13] {
        let mut events = wire.events[starts[12]..].to_vec();
        // Start both directions in the middle of a frame.
        let first_server = events.iter().position(|(dir, _)| *dir == ToClient).unwrap();
        events[0].1.drain(..cut);
        events[first_server].1.drain(..cut);
        let run = Run::whole(H2Start::Midstream, H2Config::default(), &events);
        assert_all_true(&run, &truth);
        assert!(run.stats.resync_skipped_bytes > 0);
        assert!(run.stats.requests >= 10, "{:?}", run.stats);
    }
}

#[test]
fn server_side_may_align_first() {
    let (wire, starts, truth) = connection(20, 100);
    let events = &wire.events[starts[5]..];
    let mut run = Run::new(H2Start::Midstream, H2Config::default());
    let (server, client): (Vec<_>, Vec<_>) = events
        .iter()
        .cloned()
        .partition(|(dir, _)| *dir == ToClient);
    run.feed(&server);
    run.feed(&client);
    run.close();
    assert_all_true(&run, &truth);
    assert_eq!(run.stats.responses, 15);
    assert!(run.by_dir(ToClient).iter().all(|m| m.request_id.is_none()));
}

#[test]
fn insertion_with_unknown_name_loses_the_context() {
    let blocks: [&[u8]; 6] = [
        // :method GET, :path /, insert (name = dynamic index 62, unknown) "x".
        &[0x82, 0x84, 0x7e, 0x01, b'x'],
        // Static and literal only.
        &[0x82, 0x84, 0x00, 0x01, b'a', 0x01, b'b'],
        // Insert a: b with a literal name, then refer to it.
        &[0x82, 0x84, 0x40, 0x01, b'a', 0x01, b'b'],
        &[0x82, 0x84, 0xbe],
        // Size update to 0 then 4096: the table is known again.
        &[
            0x20, 0x3f, 0xe1, 0x1f, 0x82, 0x84, 0x40, 0x01, b'c', 0x01, b'd',
        ],
        &[0x82, 0x84, 0xbe],
    ];
    let mut wire = Wire::empty();
    for (i, block) in blocks.iter().enumerate() {
        wire.block(ToServer, 2 * i as u32 + 1, block, true);
    }
    let mut run = Run::new(H2Start::Midstream, H2Config::default());
    run.feed(&wire.events[..1]);
    assert_eq!(run.framer.hpack_knowledge(ToServer), Knowledge::Lost);
    run.feed(&wire.events[1..]);
    run.close();
    let stored: Vec<String> = run
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.bytes).into_owned())
        .collect();
    assert_eq!(
        stored,
        [
            "GET / HTTP/2\r\na: b\r\n\r\n",
            "GET / HTTP/2\r\na: b\r\n\r\n",
            "GET / HTTP/2\r\nc: d\r\n\r\n",
            "GET / HTTP/2\r\nc: d\r\n\r\n",
        ]
    );
    assert_eq!(run.stats.undecodable_header_blocks, 2);
    assert_eq!(run.framer.hpack_knowledge(ToServer), Knowledge::Known);
}

#[test]
fn gap_makes_the_table_partial_again() {
    let (wire, starts, truth) = connection(12, 100);
    let mut run = Run::new(H2Start::Preface, H2Config::default());
    run.feed(&wire.events[..starts[4]]);
    run.gap(ToServer);
    run.gap(ToClient);
    run.feed(&wire.events[starts[6]..]);
    run.close();
    assert_all_true(&run, &truth);
    assert_eq!(run.framer.hpack_knowledge(ToServer), Knowledge::Partial);
    // x-session (request 6 and 9) refers to an entry from before the gap.
    assert!(run.stats.undecodable_header_blocks >= 2);
    assert_eq!(run.framer.buffered_bytes(ToServer), 0);
}
