use std::io::{BufReader, Read};

use proptest::prelude::*;

use super::*;

/// Messages of whole payload lists, as import makes them.
fn to_messages(payloads: &[GorPayload]) -> (Vec<HttpMessage>, GorMessages) {
    let mut conv = GorMessages::default();
    let messages = payloads
        .iter()
        .filter_map(|p| conv.push(p.clone()))
        .collect();
    (messages, conv)
}

fn payload(kind: u8, id: &str, ts_ns: u64, bytes: &'static [u8]) -> GorPayload {
    GorPayload {
        kind,
        id: id.into(),
        ts_ns,
        latency_ns: 0,
        bytes: Bytes::from_static(bytes),
    }
}

#[test]
fn payloads_round_trip_through_the_file_format() {
    let mut payloads = vec![
        payload(
            1,
            "0000000a0000000000000001",
            1_700_000_000_000_000_000,
            b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        ),
        payload(
            2,
            "0000000a0000000000000001",
            1_700_000_000_000_500_000,
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ),
    ];
    payloads[1].latency_ns = 500_000;
    let mut file = Vec::new();
    for p in &payloads {
        write_payload(&mut file, p).unwrap();
    }
    assert_eq!(parse(&file).unwrap(), payloads);
    let (messages, conv) = to_messages(&payloads);
    assert!(conv.drops().is_empty());
    assert_eq!(conv.messages(), 2);
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
    assert_eq!(messages[1].conn_id, messages[0].conn_id);
}

/// The shape GoReplay writes: header, message, separator; replayed responses (3) too.
const GOREPLAY_FILE: &str = "1 8a3b0c1d2e3f405162738495 1558000000000000000 0\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\n🐵🙈🙉\n\
                             3 8a3b0c1d2e3f405162738495 1558000000100000000 100000000\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\n🐵🙈🙉\n";

#[test]
fn a_file_written_by_goreplay_itself_parses() {
    let payloads = parse(GOREPLAY_FILE.as_bytes()).unwrap();
    assert_eq!(payloads.len(), 2);
    let (messages, conv) = to_messages(&payloads);
    assert_eq!(messages.len(), 1);
    assert_eq!(
        conv.drops(),
        BTreeMap::from([("replayed_responses_skipped".to_string(), 1)])
    );
}

#[test]
fn garbage_headers_are_errors_not_panics() {
    assert!(matches!(
        parse(b"not a header\nGET /"),
        Err(GorError::BadHeader { index: 0, .. })
    ));
    assert!(matches!(
        parse(b"9 id 1 1\nx"),
        Err(GorError::BadHeader { .. })
    ));
    assert!(matches!(
        parse(b"no newline at all"),
        Err(GorError::NoHeader { .. })
    ));
    // The error says where: the second payload starts after the first and its separator.
    let file = format!("1 a 1 0\nGET / HTTP/1.1\r\n\r\n{SEPARATOR}  \n{SEPARATOR}x y z\nGET /");
    let second = "1 a 1 0\nGET / HTTP/1.1\r\n\r\n".len() + 2 * SEPARATOR.len() + 3;
    match parse(file.as_bytes()) {
        Err(
            e @ GorError::BadHeader {
                index: 1, offset, ..
            },
        ) => {
            assert_eq!(offset as usize, second);
            assert!(
                e.to_string()
                    .contains(&format!("payload 1 at byte {second}"))
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reader_stops_after_an_error() {
    let mut reader = GorReader::new(&b"x\n"[..]);
    assert!(reader.next().is_some_and(|r| r.is_err()));
    assert!(reader.next().is_none());
}

#[test]
fn responses_pair_with_waiting_requests_within_the_cap() {
    let mut conv = GorMessages::with_max_pending(2);
    let get = b"GET / HTTP/1.1\r\n\r\n";
    let ok = b"HTTP/1.1 200 OK\r\n\r\n";
    let mut push = |kind, id, bytes| conv.push(payload(kind, id, 1, bytes)).unwrap();
    let a = push(1, "a", get);
    let b = push(1, "b", get);
    let c = push(1, "c", get); // "a" is forgotten
    assert_eq!((a.conn_id, b.conn_id, c.conn_id), (1, 2, 3));
    let interim = push(2, "b", b"HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!((interim.conn_id, interim.request_id), (2, Some(2)));
    let to_b = push(2, "b", ok);
    assert_eq!((to_b.conn_id, to_b.request_id), (2, Some(2)));
    // Answered: a second final response to "b" stands alone, as the one to "a" does.
    let again = push(2, "b", ok);
    assert_eq!((again.conn_id, again.request_id), (again.id, None));
    let to_a = push(2, "a", ok);
    assert_eq!((to_a.conn_id, to_a.request_id), (to_a.id, None));
    assert_eq!(
        conv.drops(),
        BTreeMap::from([("gor_pending_requests_evicted".to_string(), 1)])
    );
}

/// The whole-file splitter GoReplay files were read with before reading streamed: what the
/// streaming reader must equal. Errors as (kind, payload index, header line).
fn parse_whole(data: &[u8]) -> Result<Vec<GorPayload>, (&'static str, usize, String)> {
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
        let nl =
            payload
                .iter()
                .position(|&b| b == b'\n')
                .ok_or(("no header", index, String::new()))?;
        let line = String::from_utf8_lossy(&payload[..nl]).to_string();
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || ("bad header", index, line.clone());
        if f.len() < 3 {
            return Err(bad());
        }
        let kind: u8 = f[0].parse().map_err(|_| bad())?;
        if !(1..=3).contains(&kind) {
            return Err(bad());
        }
        out.push(GorPayload {
            kind,
            id: f[1].into(),
            ts_ns: f[2].parse().map_err(|_| bad())?,
            latency_ns: f.get(3).and_then(|l| l.parse().ok()).unwrap_or(0),
            bytes: Bytes::copy_from_slice(&payload[nl + 1..]),
        });
        index += 1;
    }
    Ok(out)
}

/// A reader that hands its data on in pieces of the given sizes (then whatever is left),
/// as a file or pipe may.
struct Pieces {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = self.sizes.pop().unwrap_or(usize::MAX).max(1);
        let n = want.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads `data` streaming, in pieces, through a buffer of `capacity` bytes.
fn parse_streaming(
    data: &[u8],
    capacity: usize,
    sizes: Vec<usize>,
) -> Result<Vec<GorPayload>, (&'static str, usize, String)> {
    let pieces = Pieces {
        data: data.to_vec(),
        at: 0,
        sizes,
    };
    let reader = GorReader::new(BufReader::with_capacity(capacity, pieces));
    reader.collect::<Result<Vec<_>, _>>().map_err(|e| match e {
        GorError::NoHeader { index, .. } => ("no header", index, String::new()),
        GorError::BadHeader { index, line, .. } => ("bad header", index, line),
        other => panic!("unexpected {other}"),
    })
}

#[test]
fn the_streaming_reader_equals_the_whole_file_splitter_on_the_known_files() {
    let mut written = Vec::new();
    for p in [
        payload(1, "a", 1, b"GET / HTTP/1.1\r\n\r\n"),
        payload(2, "a", 2, b""),
    ] {
        write_payload(&mut written, &p).unwrap();
    }
    let files: [&[u8]; 8] = [
        GOREPLAY_FILE.as_bytes(),
        &written,
        &written[..written.len() - 3],
        b"not a header\nGET /",
        b"9 id 1 1\nx",
        b"no newline at all",
        b"",
        " \n\t".as_bytes(),
    ];
    for file in files {
        for capacity in [1, 2, 7, 64, 8192] {
            assert_eq!(
                parse_streaming(file, capacity, vec![]),
                parse_whole(file),
                "{:?} through {capacity} bytes",
                String::from_utf8_lossy(file)
            );
        }
    }
}

/// Pieces a file is made of: whole payloads and the awkward bits between and inside them.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let message = proptest::collection::vec(
        prop_oneof![
            4 => proptest::sample::select(b"GET /a\r\n HTTP/1.1x".to_vec()).prop_map(|b| vec![b]),
            1 => Just(SEPARATOR.as_bytes()[..5].to_vec()),
            1 => Just(SEPARATOR.as_bytes()[1..].to_vec()),
            1 => Just("🐵".as_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..4),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat());
    let whole = (
        1u8..=3,
        "[0-9a-f]{1,24}",
        any::<u64>(),
        any::<i64>(),
        message,
    )
        .prop_map(|(kind, id, ts_ns, latency_ns, bytes)| {
            let mut out = Vec::new();
            let p = GorPayload {
                kind,
                id: id.into(),
                ts_ns,
                latency_ns,
                bytes: Bytes::from(bytes),
            };
            write_payload(&mut out, &p).expect("writing to memory");
            out
        });
    prop_oneof![
        12 => whole,
        1 => Just(SEPARATOR.as_bytes().to_vec()),
        1 => Just(b" \r\n\t".to_vec()),
        1 => Just(b"\n".to_vec()),
        1 => Just(b"2 x\n".to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_streaming_reader_equals_the_whole_file_splitter(
        pieces in proptest::collection::vec(piece(), 0..10),
        cut in 0usize..8,
        capacity in 1usize..64,
        sizes in proptest::collection::vec(1usize..40, 0..64),
    ) {
        let mut file = pieces.concat();
        // Sometimes the last separator is cut short, as a file still being written is.
        file.truncate(file.len() - cut.min(file.len()));
        prop_assert_eq!(parse_streaming(&file, capacity, sizes), parse_whole(&file));
    }
}
