//! The batch codec, exhaustively: round trips, every bit flip in head, tags and payload
//! detected, every truncation seen as incomplete (a torn tail), never a panic.

use super::*;
use crate::message::MessageKind;
use crate::packet::Timestamp;
use crate::store::embedded::record::{Reader, Shared};

fn message(id: u64, body: &[u8]) -> HttpMessage {
    HttpMessage {
        id,
        conn_id: id % 5,
        kind: MessageKind::Request {
            method: "POST".into(),
            uri: format!("/m/{id}").into(),
        },
        version: crate::message::HttpVersion::Http11,
        request_id: None,
        first_ts: Timestamp(100 + id),
        last_ts: Timestamp(200 + id),
        src: "10.0.0.1:1234".parse().unwrap(),
        dst: "10.0.0.2:80".parse().unwrap(),
        bytes: Bytes::copy_from_slice(body),
        body_len: body.len() as u64,
        complete: true,
    }
}

/// Pseudo-random bytes (xorshift), which LZ4 cannot shrink.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A whole batch of `messages` with base offset 42, as the log writes it.
fn batch_bytes(messages: &[HttpMessage], recordings: &[&str]) -> (Vec<u8>, Codec) {
    let mut b = Builder::new("node-a", 9);
    let recordings: Vec<String> = recordings.iter().map(|s| s.to_string()).collect();
    b.set_recordings(&recordings);
    for m in messages {
        b.push(m);
    }
    let sealed = b.seal(true);
    let head = sealed.head(42);
    let mut out = head.to_bytes().to_vec();
    out.extend_from_slice(sealed.var);
    out.extend_from_slice(sealed.payload);
    assert_eq!(out.len() as u64, sealed.len());
    (out, head.codec)
}

fn decode_all(buf: &[u8]) -> Vec<HttpMessage> {
    let (frame, records) = parse(buf).expect("good batch");
    let shared = Shared {
        node: &frame.tags.node,
        run: frame.tags.run,
        recordings: &frame.tags.recordings,
    };
    let mut reader = Reader::new(records);
    let out: Vec<_> = (0..frame.head.count)
        .map(|_| {
            let (meta, bytes) = reader.next_message(&shared).unwrap();
            crate::store::StoredMessage { meta, bytes }.to_http()
        })
        .collect();
    assert!(reader.is_done());
    out
}

fn compressible() -> Vec<HttpMessage> {
    (1..=20).map(|i| message(i, &[b'x'; 300])).collect()
}

fn incompressible() -> Vec<HttpMessage> {
    (1..=5).map(|i| message(i, &noise(4000, i))).collect()
}

#[test]
fn batches_round_trip_compressed_or_raw() {
    for (messages, codec) in [(compressible(), Codec::Lz4), (incompressible(), Codec::Raw)] {
        let (buf, got_codec) = batch_bytes(&messages, &["r1", "r2"]);
        assert_eq!(got_codec, codec);
        assert_eq!(decode_all(&buf), messages);
        let frame = Frame::parse(&buf).unwrap();
        assert_eq!(frame.head.base_offset, 42);
        assert_eq!(frame.head.end_offset(), 42 + messages.len() as u64);
        assert_eq!(
            frame.head.wire_bytes,
            messages.iter().map(|m| m.bytes.len() as u64).sum::<u64>()
        );
        assert_eq!(
            (frame.head.first_ts, frame.head.last_ts),
            (101, 200 + messages.len() as u64)
        );
        assert!(frame.tags.contains("r2") && !frame.tags.contains("r"));
        assert_eq!((frame.tags.node.as_str(), frame.tags.run), ("node-a", 9));
    }
    let (small, _) = batch_bytes(&compressible(), &["r1"]);
    assert!(
        small.len() < 20 * 300 / 4,
        "LZ4 did not pay: {}",
        small.len()
    );
}

#[test]
fn a_builder_is_reusable_after_clear() {
    let mut b = Builder::new("n", 1);
    b.set_recordings(&["a".to_string()]);
    b.push(&message(1, b"one"));
    b.clear();
    assert_eq!((b.count(), b.raw_len(), b.wire_bytes()), (0, 0, 0));
    b.set_recordings(&["b".to_string()]);
    b.push(&message(2, b"two"));
    let sealed = b.seal(true);
    let mut buf = sealed.head(7).to_bytes().to_vec();
    buf.extend_from_slice(sealed.var);
    buf.extend_from_slice(sealed.payload);
    assert_eq!(decode_all(&buf), vec![message(2, b"two")]);
    assert_eq!(Frame::parse(&buf).unwrap().tags.recordings, vec!["b"]);
}

#[test]
fn every_bit_flip_in_the_head_is_a_bad_head() {
    for messages in [compressible(), incompressible()] {
        let (buf, _) = batch_bytes(&messages, &["r1"]);
        for byte in 0..HEAD_LEN {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(parse(&bad), Err(BatchError::BadHead(_))),
                    "flip of byte {byte} bit {bit}: {:?}",
                    parse(&bad).map(|(f, _)| f)
                );
            }
        }
    }
}

#[test]
fn every_bit_flip_in_tags_or_payload_is_a_bad_body() {
    for messages in [compressible(), incompressible()] {
        let (buf, _) = batch_bytes(&messages, &["r1", "r2"]);
        for byte in HEAD_LEN..buf.len() {
            for bit in [0, 3, 7] {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    matches!(parse(&bad), Err(BatchError::BadBody(_))),
                    "flip of byte {byte} bit {bit}"
                );
            }
        }
    }
}

#[test]
fn every_truncation_is_incomplete_by_the_missing_length() {
    for messages in [compressible(), incompressible()] {
        let (buf, _) = batch_bytes(&messages, &["r1"]);
        for cut in 0..buf.len() {
            match parse(&buf[..cut]) {
                Err(BatchError::Incomplete { missing }) => {
                    assert!(
                        missing >= 1 && cut as u64 + missing <= buf.len() as u64,
                        "cut at {cut}"
                    );
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn heads_claiming_impossible_lengths_or_versions_are_refused() {
    let (buf, _) = batch_bytes(&compressible(), &["r1"]);
    let good = Head::parse(&buf).unwrap();
    let reparse = |h: Head| Head::parse(&h.to_bytes());
    for bad in [
        Head {
            count: 0,
            ..good.clone()
        },
        Head {
            base_offset: 0,
            ..good.clone()
        },
        Head {
            var_len: MAX_VAR_LEN + 1,
            ..good.clone()
        },
        Head {
            payload_len: MAX_PAYLOAD_LEN + 1,
            ..good.clone()
        },
        Head {
            codec: Codec::Raw,
            payload_len: 10,
            uncompressed_len: 11,
            ..good.clone()
        },
    ] {
        assert!(matches!(reparse(bad), Err(BatchError::BadHead(_))));
    }
    let mut newer = buf.clone();
    newer[4] = VERSION + 1;
    let err = Head::parse(&newer).unwrap_err().to_string();
    assert!(err.contains("newer capture"), "{err}");
}

#[test]
fn a_payload_that_decodes_to_the_wrong_length_is_bad() {
    let (buf, _) = batch_bytes(&compressible(), &["r1"]);
    let frame = Frame::parse(&buf).unwrap();
    let payload = buf[frame.payload_at() as usize..].to_vec();
    let lying = Frame {
        head: Head {
            uncompressed_len: frame.head.uncompressed_len + 1,
            ..frame.head.clone()
        },
        tags: frame.tags.clone(),
    };
    assert!(matches!(
        lying.decode_payload(payload),
        Err(BatchError::BadBody(_))
    ));
}

#[test]
fn tags_reject_trailing_or_short_bytes() {
    let tags = Tags {
        node: "n".into(),
        run: 3,
        recordings: vec!["a".into(), "bb".into()],
    };
    let mut buf = Vec::new();
    tags.encode(&mut buf);
    assert_eq!(Tags::parse(&buf).unwrap(), tags);
    for cut in 0..buf.len() {
        assert!(Tags::parse(&buf[..cut]).is_err(), "cut at {cut}");
    }
    buf.push(0);
    assert!(Tags::parse(&buf).is_err());
}

#[test]
fn a_large_batch_is_stored_raw_when_its_sample_does_not_shrink() {
    let random: Vec<_> = (1..=100).map(|i| message(i, &noise(1000, i))).collect();
    let (buf, codec) = batch_bytes(&random, &["r"]);
    assert!(Frame::parse(&buf).unwrap().head.uncompressed_len as usize > SAMPLE_BYTES);
    assert_eq!(codec, Codec::Raw);
    assert_eq!(decode_all(&buf), random);
    let repeated: Vec<_> = (1..=300).map(|i| message(i, &[b'x'; 300])).collect();
    let (buf, codec) = batch_bytes(&repeated, &["r"]);
    assert_eq!(codec, Codec::Lz4);
    assert_eq!(decode_all(&buf), repeated);
}
