//! Entry point for fuzzing the framer with arbitrary bytes, with the invariants every
//! run must keep.

use std::collections::HashSet;

use bytes::Bytes;

use super::{H2Config, H2Framer, H2Start, H2Stats, parse_stored};
use crate::counters::CounterTable;
use crate::http::FramedMessage;
use crate::http::IdAllocator;
use crate::message::HttpVersion;
use crate::message::MessageKind;
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// Id given to the HTTP/1 request in the `Upgraded` start mode.
const UPGRADE_REQUEST_ID: u64 = 1_000_000;
/// Control byte that reports a gap in the direction given by its low bit.
const GAP_CONTROL: u8 = 0xfe;

/// For the integrator's fuzz target: feeds `data` to a framer (first byte chooses start
/// mode and how to split the rest into pieces of both directions, gaps, close) and
/// checks invariants; must never panic.
///
/// Layout: byte 0 = start mode (bits 0-1: Preface, Midstream, Upgraded) and limits
/// (bit 2: tiny limits). Then records: a control byte whose bit 0 is the direction and
/// whose other bits give the piece length (1..=127), followed by the piece; a control
/// byte of 0xfe/0xff is a gap. The run ends with `close`.
pub fn fuzz_one(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let start = match mode & 3 {
        0 => H2Start::Preface,
        1 => H2Start::Midstream,
        _ => H2Start::Upgraded {
            request_id: UPGRADE_REQUEST_ID,
        },
    };
    let config = if mode & 4 != 0 {
        H2Config {
            max_header_list_bytes: 256,
            max_message_bytes: 512,
            max_streams: 4,
            max_connection_bytes: 1024,
        }
    } else {
        H2Config::default()
    };
    let mut framer = H2Framer::new(config.clone(), start);
    let mut ids = IdAllocator::default();
    let mut stats = H2Stats::default();
    let mut out = Vec::new();
    let mut ts = 0;
    while let Some((&control, tail)) = rest.split_first() {
        ts += 1;
        let dir = if control & 1 == 0 {
            FlowDir::ToServer
        } else {
            FlowDir::ToClient
        };
        if control & GAP_CONTROL == GAP_CONTROL {
            framer.gap(dir, Timestamp(ts), &mut stats, &mut out);
            rest = tail;
            continue;
        }
        let len = usize::from(control >> 1) + 1;
        let (piece, after) = tail.split_at(len.min(tail.len()));
        let bytes = Bytes::copy_from_slice(piece);
        framer.data(dir, Timestamp(ts), bytes, &mut ids, &mut stats, &mut out);
        rest = after;
    }
    framer.close(Timestamp(ts + 1), &mut ids, &mut stats, &mut out);
    assert_eq!(framer.tracked_streams(), 0, "close forgets every stream");
    check_messages(&out, &config);
    check_stats(&stats, &out);
}

/// Invariants of emitted messages, whatever the input.
pub(crate) fn check_messages(messages: &[FramedMessage], config: &H2Config) {
    let mut seen = HashSet::new();
    for message in messages {
        assert!(seen.insert(message.id), "ids are unique");
        assert_eq!(message.version, HttpVersion::Http2);
        assert!(!message.complete || message.ended, "complete implies ended");
        assert!(message.first_ts <= message.last_ts);
        let bound = config.max_message_bytes + 2 * config.max_header_list_bytes;
        assert!(message.bytes.len() <= bound, "stored form stays bounded");
        let stored = parse_stored(&message.bytes, message.body_len).expect("stored form parses");
        assert!(stored.body.len() as u64 <= message.body_len);
        if message.complete {
            assert_eq!(stored.body.len() as u64, message.body_len);
        }
        match (&message.kind, message.dir) {
            (MessageKind::Request { method, uri }, FlowDir::ToServer) => {
                assert!(message.request_id.is_none());
                if !method.contains('\u{fffd}') && !uri.contains('\u{fffd}') {
                    let start_line = format!("{method} {uri} HTTP/2");
                    assert_eq!(stored.start_line, start_line.as_bytes());
                }
            }
            (MessageKind::Response { status }, FlowDir::ToClient) => {
                assert!((200..=999).contains(status));
                if let Some(request_id) = message.request_id {
                    assert!(request_id < message.id || request_id == UPGRADE_REQUEST_ID);
                }
            }
            _ => panic!("request/response in the wrong direction"),
        }
    }
}

fn check_stats(stats: &H2Stats, messages: &[FramedMessage]) {
    assert_eq!(stats.pairs().len(), 18);
    let emitted = stats.requests + stats.responses;
    assert_eq!(emitted, messages.len() as u64, "every emission is counted");
    let incomplete = messages.iter().filter(|m| !m.complete).count() as u64;
    assert_eq!(stats.incomplete_messages, incomplete);
}
