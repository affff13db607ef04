//! Property tests: random multiplexed conversations come out exactly as sent, however
//! the bytes are cut; mid-stream starts never produce a wrong message; arbitrary bytes
//! never panic.

use crate::counters::CounterTable;
use std::collections::HashMap;

use proptest::prelude::*;
use proptest::strategy::ValueTree;

use super::super::{H2Config, H2Start, fuzz_one, parse_stored};
use super::support::*;
use crate::reassembly::FlowDir;

const NAMES: [&str; 7] = [
    "x-a",
    "x-b",
    "content-type",
    "accept",
    "cookie",
    "x-long-header-name",
    "x-c",
];

#[derive(Clone, Debug)]
struct ExchangeSpec {
    request_headers: Vec<(usize, String)>,
    request_body: Vec<u8>,
    request_trailers: Option<Vec<(usize, String)>>,
    interim: bool,
    status: u16,
    response_headers: Vec<(usize, String)>,
    response_body: Vec<u8>,
    response_trailers: Option<Vec<(usize, String)>>,
}

#[derive(Clone, Debug)]
struct ConversationSpec {
    exchanges: Vec<ExchangeSpec>,
    data_chunk: usize,
    pad: Option<u8>,
    block_split: usize,
    seed: u64,
}

fn header_list() -> impl Strategy<Value = Vec<(usize, String)>> {
    prop::collection::vec((0..NAMES.len(), "[a-z0-9 ]{0,10}"), 0..5)
}

fn body(alphabet_only: bool) -> BoxedStrategy<Vec<u8>> {
    if alphabet_only {
        prop::collection::vec(b'a'..=b'z', 0..1500).boxed()
    } else {
        prop::collection::vec(any::<u8>(), 0..1500).boxed()
    }
}

fn exchange(alphabet_only: bool) -> impl Strategy<Value = ExchangeSpec> {
    (
        (
            header_list(),
            body(alphabet_only),
            prop::option::of(header_list()),
        ),
        (any::<bool>(), 200u16..600),
        (
            header_list(),
            body(alphabet_only),
            prop::option::of(header_list()),
        ),
    )
        .prop_map(
            |((rh, rb, rt), (interim, status), (sh, sb, st))| ExchangeSpec {
                request_headers: rh,
                request_body: rb,
                request_trailers: rt,
                interim,
                status,
                response_headers: sh,
                response_body: sb,
                response_trailers: st,
            },
        )
}

fn conversation(alphabet_only: bool) -> impl Strategy<Value = ConversationSpec> {
    (
        prop::collection::vec(exchange(alphabet_only), 1..6),
        1usize..3000,
        prop::option::of(0u8..20),
        1usize..64,
        any::<u64>(),
    )
        .prop_map(
            |(exchanges, data_chunk, pad, block_split, seed)| ConversationSpec {
                exchanges,
                data_chunk,
                pad,
                block_split,
                seed,
            },
        )
}

fn named(list: &[(usize, String)]) -> Fields {
    list.iter()
        .map(|(i, v)| (NAMES[*i].to_string(), v.clone()))
        .collect()
}

/// One part of an exchange, in the order it must be sent.
#[derive(Clone, Copy)]
enum Part {
    RequestHead,
    RequestRest,
    Interim,
    ResponseHead,
    ResponseRest,
}

/// The truth: every message of the conversation, by (direction, stream id).
type Truth = HashMap<(u8, u32), Message>;

/// Every message the conversation carries.
fn truth_of(spec: &ConversationSpec) -> Truth {
    let mut truth = Truth::new();
    for (i, ex) in spec.exchanges.iter().enumerate() {
        let id = 2 * i as u32 + 1;
        let method = if ex.request_body.is_empty() {
            "GET"
        } else {
            "POST"
        };
        let mut head = fields(&[
            (":method", method),
            (":scheme", "http"),
            (":path", &format!("/s{id}")),
            (":authority", "h"),
        ]);
        head.extend(named(&ex.request_headers));
        truth.insert(
            (0, id),
            Message::new(
                head,
                &ex.request_body,
                ex.request_trailers.as_deref().map(named),
            ),
        );
        let mut head = fields(&[
            (":status", &ex.status.to_string()),
            ("x-stream", &id.to_string()),
        ]);
        head.extend(named(&ex.response_headers));
        truth.insert(
            (1, id),
            Message::new(
                head,
                &ex.response_body,
                ex.response_trailers.as_deref().map(named),
            ),
        );
    }
    truth
}

fn build(spec: &ConversationSpec) -> (Wire, Truth) {
    let truth = truth_of(spec);
    let mut wire = Wire::new();
    wire.style = FrameStyle {
        data_chunk: spec.data_chunk,
        pad: spec.pad,
        block_split: spec.block_split,
    };
    let mut queues: Vec<(u32, Vec<Part>)> = spec
        .exchanges
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let mut parts = vec![Part::RequestHead, Part::RequestRest];
            if ex.interim {
                parts.push(Part::Interim);
            }
            parts.extend([Part::ResponseHead, Part::ResponseRest]);
            parts.reverse();
            (2 * i as u32 + 1, parts)
        })
        .collect();
    let mut rng = SplitRng::new(spec.seed);
    while !queues.is_empty() {
        let pick = rng.below(queues.len());
        let (id, parts) = &mut queues[pick];
        let id = *id;
        let part = parts.pop().unwrap();
        if parts.is_empty() {
            queues.remove(pick);
        }
        let (dir, message) = match part {
            Part::RequestHead | Part::RequestRest => (ToServer, &truth[&(0, id)]),
            Part::Interim => {
                wire.headers(
                    ToClient,
                    id,
                    &fields(&[(":status", "103"), ("link", "</a>")]),
                    false,
                );
                continue;
            }
            Part::ResponseHead | Part::ResponseRest => (ToClient, &truth[&(1, id)]),
        };
        let only_headers = message.body.is_empty() && message.trailers.is_none();
        if matches!(part, Part::RequestHead | Part::ResponseHead) {
            wire.headers(dir, id, &message.fields, only_headers);
            continue;
        }
        if !message.body.is_empty() {
            wire.data(dir, id, &message.body, message.trailers.is_none());
        }
        if let Some(trailers) = &message.trailers {
            wire.headers(dir, id, trailers, true);
        }
    }
    (wire, truth)
}

/// The stream a message belongs to, from its `:path` or `x-stream` field.
fn stream_of(message: &crate::http::FramedMessage) -> u32 {
    let stored = parse_stored(&message.bytes, message.body_len).unwrap();
    let text = match message.dir {
        FlowDir::ToServer => stored.pseudo[1].1.strip_prefix(b"/s").unwrap(),
        FlowDir::ToClient => stored.headers[0].1,
    };
    std::str::from_utf8(text).unwrap().parse().unwrap()
}

fn check_exact(run: &Run, truth: &Truth) -> Result<(), TestCaseError> {
    prop_assert_eq!(run.messages.len(), truth.len(), "{:?}", run.stats);
    let mut request_ids = HashMap::new();
    for message in &run.messages {
        let stream = stream_of(message);
        let expected = &truth[&(message.dir as u8, stream)];
        prop_assert_eq!(&message.bytes[..], &expected.stored()[..]);
        prop_assert_eq!(message.body_len, expected.body.len() as u64);
        prop_assert!(message.complete && message.ended);
        if message.dir == FlowDir::ToServer {
            request_ids.insert(stream, message.id);
        }
    }
    for message in run.by_dir(FlowDir::ToClient) {
        prop_assert_eq!(
            message.request_id,
            request_ids.get(&stream_of(message)).copied()
        );
    }
    prop_assert!(
        run.stats.losses().iter().all(|(_, n)| *n == 0),
        "{:?}",
        run.stats
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn whole_conversations_come_out_exactly(spec in conversation(false)) {
        let (wire, truth) = build(&spec);
        let run = Run::whole(H2Start::Preface, H2Config::default(), &wire.events);
        check_exact(&run, &truth)?;
        prop_assert_eq!(run.framer.tracked_streams(), 0);
    }

    #[test]
    fn segmented_conversations_come_out_exactly(spec in conversation(false)) {
        let (wire, truth) = build(&spec);
        let events = segment(&wire.events, &mut SplitRng::new(spec.seed ^ 0x5eed));
        assert_causal(&wire.events, &events);
        let run = Run::whole(H2Start::Preface, H2Config::default(), &events);
        check_exact(&run, &truth)?;
    }

    /// Starting anywhere in both directions, whatever is emitted is exactly right
    /// (a prefix of the truth when cut by the close).
    #[test]
    fn midstream_starts_never_guess(spec in conversation(true), client_cut in any::<usize>(), server_cut in any::<usize>()) {
        let (wire, truth) = build(&spec);
        let truths: Vec<Vec<u8>> = truth.values().map(Message::stored).collect();
        let mut client: Vec<u8> = Vec::new();
        let mut server: Vec<u8> = Vec::new();
        for (dir, bytes) in &wire.events {
            if *dir == ToServer { client.extend(bytes) } else { server.extend(bytes) }
        }
        let client_tail = client.split_off(client_cut % client.len());
        let server_tail = server.split_off(server_cut % server.len());
        let mut run = Run::new(H2Start::Midstream, H2Config::default());
        for chunk in client_tail.chunks(700) {
            run.feed_one(ToServer, chunk);
        }
        for chunk in server_tail.chunks(900) {
            run.feed_one(ToClient, chunk);
        }
        run.close();
        for message in &run.messages {
            let exact = truths.iter().any(|t| t[..] == message.bytes[..]);
            let prefix = !message.complete && truths.iter().any(|t| t.starts_with(&message.bytes));
            prop_assert!(exact || prefix, "guessed {:?}", String::from_utf8_lossy(&message.bytes));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        fuzz_one(&data);
    }

    /// Valid traffic mangled at random bytes never panics and keeps the invariants.
    #[test]
    fn mangled_conversations_never_panic(spec in conversation(false), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8), mode in 0u8..8) {
        let (wire, _) = build(&spec);
        let mut data = fuzz_input(mode, &wire.events);
        for (at, value) in flips {
            let at = 1 + at % (data.len() - 1);
            data[at] = value;
        }
        fuzz_one(&data);
    }
}

/// Encodes events in `fuzz_one`'s input layout: mode byte, then (control, piece) records.
fn fuzz_input(mode: u8, events: &[(FlowDir, Vec<u8>)]) -> Vec<u8> {
    let mut data = vec![mode];
    for (dir, bytes) in events {
        for chunk in bytes.chunks(127) {
            data.push(((chunk.len() as u8 - 1) << 1) | (*dir as u8));
            data.extend_from_slice(chunk);
        }
    }
    data
}

/// Writes a seed corpus for the cargo-fuzz target:
/// `H2_FUZZ_SEEDS=fuzz/corpus/h2_framer cargo test write_fuzz_seeds -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let Ok(dir) = std::env::var("H2_FUZZ_SEEDS") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for i in 0..24u8 {
        let spec = conversation(i % 2 == 0)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (wire, _) = build(&spec);
        let data = fuzz_input(i % 8, &wire.events);
        std::fs::write(format!("{dir}/seed-{i}"), data).unwrap();
    }
}
