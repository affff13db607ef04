//! Property tests of decode + reassembly + framing together: random HTTP exchanges
//! (keep-alive, pipelined, chunked, large bodies) serialised into TCP segments split at
//! random boundaries, reordered within a window and duplicated, must give back exactly the
//! original messages, byte for byte, paired correctly.

use bytes::Bytes;
use capture_user::decode::{LinkType, frame_flow_hash};
use capture_user::message::MessageKind;
use capture_user::packet::{CapturedPacket, Direction, Timestamp};
use capture_user::pipeline::{Pipeline, PipelineConfig};
use proptest::prelude::*;

const CLIENT: ([u8; 4], u16) = ([10, 0, 0, 1], 40000);
const SERVER: ([u8; 4], u16) = ([10, 0, 0, 2], 8080);

#[derive(Clone, Debug)]
enum BodyKind {
    None,
    Length(Vec<u8>),
    /// Body and the chunk sizes it is cut into.
    Chunked(Vec<u8>, Vec<usize>),
}

#[derive(Clone, Debug)]
struct Exchange {
    method: &'static str,
    uri: String,
    request_body: BodyKind,
    status: u16,
    response_body: BodyKind,
}

fn body_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn body_kind(max: usize) -> impl Strategy<Value = BodyKind> {
    prop_oneof![
        Just(BodyKind::None),
        body_bytes(max).prop_map(BodyKind::Length),
        (body_bytes(max), prop::collection::vec(1usize..700, 1..8))
            .prop_map(|(b, sizes)| BodyKind::Chunked(b, sizes)),
    ]
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]),
        "/[a-z0-9/_.-]{0,40}",
        body_kind(3000),
        prop::sample::select(vec![200u16, 201, 204, 304, 404, 500]),
        prop_oneof![
            body_kind(5000),
            body_bytes(70_000).prop_map(BodyKind::Length)
        ],
    )
        .prop_map(
            |(method, uri, request_body, status, response_body)| Exchange {
                method,
                uri,
                request_body,
                status,
                response_body,
            },
        )
}

fn encode_body(head: &mut Vec<u8>, body: &BodyKind, send_body: bool) {
    match body {
        BodyKind::None => head.extend_from_slice(b"\r\n"),
        BodyKind::Length(b) => {
            head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
            if send_body {
                head.extend_from_slice(b);
            }
        }
        BodyKind::Chunked(b, sizes) => {
            head.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            if !send_body {
                return;
            }
            let mut rest = &b[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = sizes[i % sizes.len()].min(rest.len());
                let ext = if i % 3 == 1 { ";ext=v" } else { "" };
                head.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                head.extend_from_slice(&rest[..n]);
                head.extend_from_slice(b"\r\n");
                rest = &rest[n..];
                i += 1;
            }
            head.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
        }
    }
}

impl Exchange {
    fn request(&self) -> Vec<u8> {
        let mut r =
            format!("{} {} HTTP/1.1\r\nHost: example\r\n", self.method, self.uri).into_bytes();
        encode_body(&mut r, &self.request_body, true);
        r
    }

    fn response(&self) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 {} X\r\nServer: t\r\n", self.status).into_bytes();
        let no_body = self.method == "HEAD" || self.status == 204 || self.status == 304;
        // A response without a length would run until the close; keep-alive needs one.
        let empty = BodyKind::Length(Vec::new());
        let body = match (self.status, &self.response_body) {
            (204 | 304, _) => &BodyKind::None,
            (_, BodyKind::None) => &empty,
            (_, body) => body,
        };
        encode_body(&mut r, body, !no_body);
        r
    }
}

/// One direction's bytes cut into segments `(seq, payload)`.
fn segments(isn: u32, stream: &[u8], cuts: &[usize]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let n = cuts[i % cuts.len()].min(stream.len() - pos);
        out.push((
            isn.wrapping_add(1).wrapping_add(pos as u32),
            stream[pos..pos + n].to_vec(),
        ));
        pos += n;
        i += 1;
    }
    out
}

/// Reorders within a window of `window` positions and duplicates some segments.
fn shuffle(
    mut segs: Vec<(u32, Vec<u8>)>,
    swaps: &[(usize, usize)],
    dups: &[usize],
    window: usize,
) -> Vec<(u32, Vec<u8>)> {
    if segs.is_empty() {
        return segs;
    }
    for &(a, d) in swaps {
        let a = a % segs.len();
        let b = (a + d % window).min(segs.len() - 1);
        segs.swap(a, b);
    }
    for &d in dups {
        let i = d % segs.len();
        let copy = segs[i].clone();
        segs.insert((i + 3).min(segs.len()), copy);
    }
    segs
}

fn frame(from_client: bool, seq: u32, flags: &str, payload: &[u8]) -> CapturedPacket {
    let ((src, sport), (dst, dport)) = if from_client {
        (CLIENT, SERVER)
    } else {
        (SERVER, CLIENT)
    };
    let mut builder = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 65535);
    if flags.contains('S') {
        builder = builder.syn();
    }
    if flags.contains('F') {
        builder = builder.fin();
    }
    if flags.contains('A') {
        builder = builder.ack(1);
    }
    let mut data = Vec::new();
    builder.write(&mut data, payload).expect("frame");
    let data = Bytes::from(data);
    CapturedPacket {
        ts: Timestamp(1_000),
        ifindex: 1,
        direction: Direction::Ingress,
        link: LinkType::Ethernet,
        wire_len: data.len() as u32,
        flow_hash: frame_flow_hash(LinkType::Ethernet, &data),
        data,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn segmented_reordered_duplicated_exchanges_frame_back_exactly(
        exchanges in prop::collection::vec(exchange(), 1..6),
        isn_c in any::<u32>(),
        isn_s in any::<u32>(),
        cuts_c in prop::collection::vec(1usize..1500, 1..10),
        cuts_s in prop::collection::vec(1usize..1500, 1..10),
        swaps in prop::collection::vec((any::<usize>(), any::<usize>()), 0..20),
        dups in prop::collection::vec(any::<usize>(), 0..5),
    ) {
        let client_stream: Vec<u8> = exchanges.iter().flat_map(|e| e.request()).collect();
        let server_stream: Vec<u8> = exchanges.iter().flat_map(|e| e.response()).collect();
        let client_segs = shuffle(segments(isn_c, &client_stream, &cuts_c), &swaps, &dups, 4);
        let server_segs = shuffle(segments(isn_s, &server_stream, &cuts_s), &swaps, &dups, 4);

        let mut packets = vec![frame(true, isn_c, "S", b""), frame(false, isn_s, "SA", b"")];
        // Pipelined: every request goes out before the responses come back.
        packets.extend(client_segs.iter().map(|(seq, p)| frame(true, *seq, "A", p)));
        packets.extend(server_segs.iter().map(|(seq, p)| frame(false, *seq, "A", p)));
        let fin_c = isn_c.wrapping_add(1).wrapping_add(client_stream.len() as u32);
        let fin_s = isn_s.wrapping_add(1).wrapping_add(server_stream.len() as u32);
        packets.push(frame(true, fin_c, "FA", b""));
        packets.push(frame(false, fin_s, "FA", b""));

        let mut pipeline = Pipeline::new(PipelineConfig { ports: vec![SERVER.1], ..PipelineConfig::default() });
        let mut messages = Vec::new();
        for p in packets {
            pipeline.push_packet(p, &mut messages);
        }
        pipeline.finish(&mut messages);
        let stats = pipeline.stats();

        let requests: Vec<_> = messages.iter().filter(|m| m.is_request()).collect();
        let responses: Vec<_> = messages.iter().filter(|m| !m.is_request()).collect();
        prop_assert_eq!(requests.len(), exchanges.len(), "stats: {}", stats.to_line());
        prop_assert_eq!(responses.len(), exchanges.len(), "stats: {}", stats.to_line());
        for (i, e) in exchanges.iter().enumerate() {
            prop_assert_eq!(&requests[i].bytes[..], &e.request()[..]);
            prop_assert_eq!(&responses[i].bytes[..], &e.response()[..]);
            prop_assert!(requests[i].complete && responses[i].complete);
            prop_assert_eq!(&requests[i].kind, &MessageKind::Request { method: e.method.into(), uri: e.uri.as_str().into() });
            prop_assert_eq!(&responses[i].kind, &MessageKind::Response { status: e.status });
            prop_assert_eq!(responses[i].request_id, Some(requests[i].id));
        }
        prop_assert_eq!(stats.reassembly.gaps, 0);
        prop_assert_eq!(stats.framing.http.incomplete_messages, 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 0..40),
        seqs in prop::collection::vec(any::<u32>(), 40),
    ) {
        let mut pipeline = Pipeline::new(PipelineConfig { ports: vec![SERVER.1], ..PipelineConfig::default() });
        let mut messages = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            pipeline.push_packet(frame(i % 2 == 0, seqs[i], "A", c), &mut messages);
        }
        pipeline.finish(&mut messages);
        let total_in: usize = chunks.iter().map(Vec::len).sum();
        let total_out: usize = messages.iter().map(|m| m.bytes.len()).sum();
        prop_assert!(total_out <= total_in);
    }
}
