use proptest::prelude::*;

use super::super::head::{BodyFraming, HeadParse, parsed_request_head, parsed_response_head};
use super::*;

/// A quick reading checked against httparse's: when it answers, both agree on the head
/// and on what they counted.
fn agrees(
    quick: fn(&[u8], &mut HttpStats) -> Option<Head>,
    parsed: fn(&[u8], &mut HttpStats) -> HeadParse,
    buf: &[u8],
) -> Option<Head> {
    let mut quick_stats = HttpStats::default();
    let head = quick(buf, &mut quick_stats)?;
    let mut stats = HttpStats::default();
    match parsed(buf, &mut stats) {
        HeadParse::Complete(parsed) => {
            assert_eq!(head, parsed, "{:?}", String::from_utf8_lossy(buf))
        }
        _ => panic!("httparse refuses {:?}", String::from_utf8_lossy(buf)),
    }
    assert_eq!(quick_stats, stats);
    Some(head)
}

fn request_agrees(buf: &[u8]) -> Option<Head> {
    agrees(request, parsed_request_head, buf)
}

fn response_agrees(buf: &[u8]) -> Option<Head> {
    agrees(response, parsed_response_head, buf)
}

#[test]
fn common_heads_are_read_quickly_and_as_httparse_reads_them() {
    let wrk = b"GET /index.html?t=0&n=2 HTTP/1.1\r\nHost: 10.100.105.2:8080\r\n\r\n";
    let head = request_agrees(wrk).expect("wrk's request is the plain shape");
    assert_eq!(head.len, wrk.len());
    let post = b"POST /upload?t=0&n=3 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nppp";
    let head = request_agrees(post).expect("a POST with a length");
    assert_eq!(head.framing, BodyFraming::Length(3));
    assert_eq!(head.len, post.len() - 3);
    let curl = b"PUT /a HTTP/1.0\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\
        Transfer-Encoding: gzip, chunked \r\n\r\n";
    let head = request_agrees(curl).expect("curl's request");
    assert_eq!(
        (head.minor_version, head.framing),
        (0, BodyFraming::Chunked)
    );

    let nginx =
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 07:58:16 GMT\r\n\
        Content-Type: text/html\r\nContent-Length: 17\r\nConnection: keep-alive\r\n\
        ETag: \"6b151597-11\"\r\nAccept-Ranges: bytes\r\n\r\nhello from nginx\n";
    let head = response_agrees(nginx).expect("nginx's response");
    assert_eq!(head.kind, MessageKind::Response { status: 200 });
    assert_eq!(head.framing, BodyFraming::Length(17));
    let empty_reason = b"HTTP/1.1 204 \r\nX-Tab:\tvalue\twith tabs\t\r\n\r\n";
    assert!(response_agrees(empty_reason).is_some());
    let close = b"HTTP/1.0 200 OK\r\n\r\n";
    assert_eq!(
        response_agrees(close).map(|h| h.framing),
        Some(BodyFraming::UntilClose)
    );
}

#[test]
fn ambiguous_and_bad_lengths_count_as_httparse_counts_them() {
    let both = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        request_agrees(both).map(|h| h.framing),
        Some(BodyFraming::Chunked)
    );
    let conflicting = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(
        response_agrees(conflicting).map(|h| h.framing),
        Some(BodyFraming::Invalid)
    );
    let not_a_number = b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n";
    assert_eq!(
        request_agrees(not_a_number).map(|h| h.framing),
        Some(BodyFraming::Invalid)
    );
}

#[test]
fn other_shapes_are_left_to_httparse() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n",         // not ended yet
        b"GET / HTTP/1.1\nHost: x\n\n",           // bare LF
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",    // space before the colon
        b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",  // obs-fold
        b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",        // non-ASCII URI
        b"GET / HTTP/1.1\r\nA: \xc3\xa9\r\n\r\n", // non-ASCII value
        b"GET / HTTP/1.1\r\nA: b\x7fc\r\n\r\n",   // DEL in a value
        b"get / HTTP/1.1\r\n\r\n",                // lower-case method
        b"GET  / HTTP/1.1\r\n\r\n",               // two spaces
        b"GET / HTTP/2.0\r\n\r\n",                // not HTTP/1.x
        b"GET /\r\n\r\n",                         // no version
        b"HTTP/1.1 200\r\n\r\n",                  // no reason phrase
        b"HTTP/1.1 20x OK\r\n\r\n",               // not a status
    ];
    for case in cases {
        let mut stats = HttpStats::default();
        let quick = request(case, &mut stats).or_else(|| response(case, &mut stats));
        assert!(quick.is_none(), "{:?}", String::from_utf8_lossy(case));
    }
}

#[test]
fn more_headers_than_httparse_has_room_for_are_left_to_it() {
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    let mut full = head.clone();
    full.extend_from_slice(b"\r\n");
    assert!(
        request_agrees(&full).is_some(),
        "exactly as many as it has room for"
    );
    head.extend_from_slice(b"X-last: v\r\n\r\n");
    assert!(request(&head, &mut HttpStats::default()).is_none());
}

#[test]
fn word_scans_stop_at_the_first_byte_they_must() {
    for len in 0..40 {
        for (pos, stop) in [
            (b'\r', true),
            (b'\t', false),
            (0x7f, true),
            (0x80, true),
            (0, true),
        ]
        .iter()
        .flat_map(|&(b, stops)| (0..len).map(move |p| (p, (b, stops))))
        {
            let mut bytes = vec![b'a'; len];
            bytes[pos] = stop.0;
            let want = if stop.1 { pos } else { len };
            assert_eq!(
                printable_end(&bytes, 0),
                want,
                "len {len} {:?} at {pos}",
                stop.0
            );
        }
        let mut uri = vec![b'/'; len];
        uri.push(b' ');
        assert_eq!(uri_len(&uri), Some(len));
        assert_eq!(
            uri_len(&uri[..len]),
            None,
            "a URI running to the end is not ended"
        );
    }
}

#[test]
fn name_letters_are_marked_exactly_whatever_their_neighbours() {
    let neighbours = [0x00, b'-', b'a', b'Z', b'9', b':', 0x7f, 0x80, 0xff];
    for b in 0..=255u8 {
        let plain = b.is_ascii_alphanumeric() || b == b'-';
        for pos in 0..8 {
            for &n in &neighbours {
                let mut word = [n; 8];
                word[pos] = b;
                let marks = not_letter_digit_dash(u64::from_le_bytes(word));
                let marked = marks & (0x80 << (pos * 8)) != 0;
                assert_eq!(marked, !plain, "byte {b:#04x} at {pos} among {n:#04x}");
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn block_classes_mark_exactly_the_bytes_the_word_tests_mark() {
    let neighbours = [
        0x00, b'\t', b'-', b'a', b'Z', b'9', b':', b'!', 0x7f, 0x80, 0xff,
    ];
    for b in 0..=255u8 {
        let name_stop = !(b.is_ascii_alphanumeric() || b == b'-');
        let value_stop = !(0x20..0x7f).contains(&b);
        let uri_stop = !(0x21..0x7f).contains(&b);
        for pos in 0..16 {
            for &n in &neighbours {
                let mut block = [n; 16];
                block[pos] = b;
                let bit = 1u32 << pos;
                let at = |marks: u32| marks & bit != 0;
                let ctx = format!("byte {b:#04x} at {pos} among {n:#04x}");
                assert_eq!(at(sse2::not_letter_digit_dash(&block)), name_stop, "{ctx}");
                assert_eq!(at(sse2::not_printable(&block)), value_stop, "{ctx}");
                assert_eq!(at(sse2::not_uri(&block)), uri_stop, "{ctx}");
            }
        }
    }
}

#[test]
fn framing_names_are_told_apart_as_a_case_blind_comparison_would() {
    let tokens: Vec<u8> = (0..=255u8).filter(|&b| is_token(b)).collect();
    for lower in [&b"content-length"[..], b"transfer-encoding"] {
        for pos in 0..lower.len() {
            for &b in &tokens {
                let mut name = lower.to_vec();
                name[pos] = b;
                assert_eq!(
                    name_is(&name, lower),
                    name.eq_ignore_ascii_case(lower),
                    "{:?}",
                    String::from_utf8_lossy(&name)
                );
            }
        }
        assert!(name_is(&lower.to_ascii_uppercase(), lower));
        assert!(
            !name_is(&lower[1..], lower),
            "a shorter name is another name"
        );
    }
}

#[test]
fn names_end_at_the_first_byte_that_is_no_token() {
    let names: &[&[u8]] = &[
        b"",
        b"Host",
        b"Content-Length",
        b"X-Forwarded-For-Something-Long",
        b"a!#$%&'*+.^_`|~z",
        b"Accept-Ranges",
        b"x_y",
    ];
    for name in names {
        for tail in [&b": v"[..], b" : v", b"\xc3", b"", b"\t", b"(x)"] {
            let mut buf = name.to_vec();
            buf.extend_from_slice(tail);
            let want = buf.iter().position(|&b| !is_token(b)).unwrap_or(buf.len());
            assert_eq!(
                name_end(&buf, 0),
                want,
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
}

/// Pieces heads are made of, plain and odd, so random heads cover both readers' edges.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"GET",
        b"POST",
        b"get",
        b"M-SEARCH",
        b" ",
        b"  ",
        b"\t",
        b"/",
        b"/a?b=c",
        b"*",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/1.2",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.0 404 Not Found",
        b"\r\n",
        b"\n",
        b"\r",
        b":",
        b": ",
        b" :",
        b"Host",
        b"Content-Length",
        b"content-length",
        b"Transfer-Encoding",
        b"transfer-encoding",
        b"chunked",
        b"gzip, chunked",
        b",",
        b"5",
        b"12",
        b"x",
        b"\x7f",
        b"\x80",
        b"\xc3\xa9",
        b"\0",
        b"X-A",
        b"Bad Name",
    ];
    prop_oneof![
        4 => proptest::sample::select(fixed).prop_map(<[u8]>::to_vec),
        1 => proptest::collection::vec(any::<u8>(), 0..6),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn the_quick_reading_never_disagrees_with_httparse(
        start in prop_oneof![Just(&b"GET /x HTTP/1.1\r\n"[..]), Just(&b"HTTP/1.1 200 OK\r\n"[..]),
            Just(&b""[..])],
        pieces in proptest::collection::vec(piece(), 0..24),
        end in prop_oneof![Just(&b"\r\n\r\n"[..]), Just(&b"\r\n"[..]), Just(&b""[..])],
    ) {
        let mut buf = start.to_vec();
        pieces.iter().for_each(|p| buf.extend_from_slice(p));
        buf.extend_from_slice(end);
        // Each agrees with httparse whenever it answers (checked inside).
        request_agrees(&buf);
        response_agrees(&buf);
    }

    #[test]
    fn a_plain_content_length_reads_as_the_list_reading_does(
        before in proptest::option::of(0u64..30),
        value in "[0-9]{1,20}|[0-9 ,]{0,8}",
    ) {
        let state = before.map_or(ContentLength::Absent, ContentLength::Value);
        prop_assert_eq!(state.add(value.as_bytes()), state.add_list(value.as_bytes()));
    }

    #[test]
    fn plain_heads_are_always_read_quickly(
        uri in "/[a-zA-Z0-9/?&=%._~-]{0,60}",
        headers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,40}"), 0..12),
        length in proptest::option::of(0u64..100_000),
    ) {
        let mut buf = format!("GET {uri} HTTP/1.1\r\n").into_bytes();
        for (name, value) in &headers {
            if !name.eq_ignore_ascii_case("content-length")
                && !name.eq_ignore_ascii_case("transfer-encoding")
            {
                buf.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        if let Some(n) = length {
            buf.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        let head = request_agrees(&buf);
        prop_assert!(head.is_some(), "{:?}", String::from_utf8_lossy(&buf));
        let want = length.filter(|n| *n > 0).map_or(BodyFraming::None, BodyFraming::Length);
        prop_assert_eq!(head.map(|h| h.framing), Some(want));
    }
}
