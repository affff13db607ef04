//! Turns one raw HTTP/1.x response, as captured on the wire, into what a client would see:
//! status, headers, and the body de-chunked and content-decoded. Responses are compared on
//! what they mean, not on how they were framed or compressed, so a gzip body and its plain
//! twin compare equal. Sans-IO and total: any bytes give a response or a `DecodeError`, never
//! a panic; capture caps, cut streams and corrupt compression are reported, not fatal.

use std::io::Read;

use thiserror::Error;

/// How many headers a response head may carry; more is treated as a bad head.
const MAX_HEADERS: usize = 128;

/// Read buffer of the brotli decoder (its window is allocated separately).
const BROTLI_BUFFER: usize = 4096;

/// A response reduced to what its comparison needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodedResponse {
    /// The final status (interim 1xx responses skipped).
    pub status: u16,
    /// In order, names as sent, values lossy UTF-8.
    pub headers: Vec<(String, String)>,
    /// De-chunked and content-decoded.
    pub body: Vec<u8>,
    /// The raw input ended early or the decoded body hit the cap: the body is a prefix.
    pub body_cut: bool,
    /// A Content-Encoding that could not be undone: the body is compared as sent.
    pub undecoded_encoding: Option<String>,
}

/// Why a response head could not be read (the body never makes decoding fail).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the blank line that ends the head (a cap or a cut capture).
    #[error("response head incomplete: {0} bytes without the blank line that ends the head")]
    IncompleteHead(usize),
    /// The bytes are not an HTTP/1.x status line and headers.
    #[error("response head is not HTTP/1.x: {0}")]
    BadHead(#[from] httparse::Error),
}

/// The head of one response: what framing and decoding need.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    len: usize,
}

/// Decodes `raw`, exactly one HTTP/1.x response as captured (possibly cut short), keeping at
/// most `max_body` decoded body bytes so that a decompression bomb costs at most that much.
/// Interim 1xx responses before the final one are skipped.
pub fn decode_response(raw: &[u8], max_body: usize) -> Result<DecodedResponse, DecodeError> {
    let mut rest = raw;
    let mut head = parse_head(rest)?;
    while is_interim(head.status) {
        match rest.get(head.len..) {
            Some(after) if !after.is_empty() => {
                rest = after;
                head = parse_head(rest)?;
            }
            _ => break,
        }
    }
    let after_head = rest.get(head.len..).unwrap_or_default();
    let (framed, framing_cut) = frame_body(&head, after_head);
    let mut response = DecodedResponse {
        status: head.status,
        headers: head.headers,
        body: Vec::new(),
        body_cut: framing_cut,
        undecoded_encoding: None,
    };
    let encodings = content_encodings(&response.headers);
    if framed.is_empty() || encodings.is_empty() {
        response.body = cap(framed, max_body, &mut response.body_cut);
        return Ok(response);
    }
    match undo_encodings(&encodings, &framed, framing_cut, max_body) {
        Some((body, cut)) => {
            response.body = body;
            response.body_cut |= cut;
        }
        None => {
            response.body = cap(framed, max_body, &mut response.body_cut);
            response.undecoded_encoding = Some(encodings.join(", "));
        }
    }
    Ok(response)
}

/// 1xx responses other than 101 precede the final response on the same exchange.
fn is_interim(status: u16) -> bool {
    (100..200).contains(&status) && status != 101
}

fn parse_head(raw: &[u8]) -> Result<Head, DecodeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(raw)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Err(DecodeError::IncompleteHead(raw.len())),
    };
    let status = parsed.code.ok_or(DecodeError::IncompleteHead(raw.len()))?;
    let headers = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok(Head {
        status,
        headers,
        len,
    })
}

/// The values of every header named `name` (any case), in order.
fn header_values<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The body bytes as framed by the head, and whether they were cut short.
fn frame_body(head: &Head, after_head: &[u8]) -> (Vec<u8>, bool) {
    if matches!(head.status, 100..=199 | 204 | 304) {
        return (Vec::new(), false);
    }
    let chunked = header_values(&head.headers, "transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case("chunked"));
    if chunked {
        return dechunk(after_head);
    }
    let length = header_values(&head.headers, "content-length")
        .next()
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) if len <= after_head.len() => {
            (after_head.get(..len).unwrap_or_default().to_vec(), false)
        }
        Some(_) => (after_head.to_vec(), true),
        None => (after_head.to_vec(), false),
    }
}

/// Joins the chunks of a chunked body (trailers are dropped). A cut or malformed stream keeps
/// the data read so far and reports the cut.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let (size_len, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) | Err(_) => return (body, true),
        };
        rest = rest.get(size_len..).unwrap_or_default();
        if size == 0 {
            return (body, false);
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        match (rest.get(..size), rest.get(size..)) {
            (Some(data), Some(after)) => {
                body.extend_from_slice(data);
                rest = after;
            }
            _ => {
                body.extend_from_slice(rest);
                return (body, true);
            }
        }
        match rest.strip_prefix(b"\r\n") {
            Some(after) => rest = after,
            None => return (body, true),
        }
    }
}

/// Content codings in the order they were applied, lowercase, identity left out.
fn content_encodings(headers: &[(String, String)]) -> Vec<String> {
    header_values(headers, "content-encoding")
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect()
}

/// Keeps at most `max` bytes, noting a cut.
fn cap(mut bytes: Vec<u8>, max: usize, cut: &mut bool) -> Vec<u8> {
    if bytes.len() > max {
        bytes.truncate(max);
        *cut = true;
    }
    bytes
}

/// Undoes the codings last to first. None when one is unknown or corrupt (the caller keeps the
/// encoded bytes); a stream that was cut short decodes as far as it goes.
fn undo_encodings(
    encodings: &[String],
    framed: &[u8],
    input_cut: bool,
    max: usize,
) -> Option<(Vec<u8>, bool)> {
    let mut data = framed.to_vec();
    let mut cut = input_cut;
    for coding in encodings.iter().rev() {
        let (decoded, this_cut) = decode_one(coding, &data, cut, max)?;
        data = decoded;
        cut |= this_cut;
    }
    Some((data, cut))
}

/// One coding undone, capped at `max` output bytes: (bytes, cut).
fn decode_one(coding: &str, input: &[u8], input_cut: bool, max: usize) -> Option<(Vec<u8>, bool)> {
    match coding {
        "gzip" | "x-gzip" => read_capped(flate2::read::MultiGzDecoder::new(input), input_cut, max),
        "br" => read_capped(
            brotli_decompressor::Decompressor::new(input, BROTLI_BUFFER),
            input_cut,
            max,
        ),
        "deflate" => read_capped(flate2::read::ZlibDecoder::new(input), input_cut, max)
            .or_else(|| read_capped(flate2::read::DeflateDecoder::new(input), input_cut, max)),
        _ => None,
    }
}

/// Reads a decoder to its end or to `max` bytes. A read error means corrupt input (None)
/// unless the input is known to be cut, when the bytes decoded so far are kept.
fn read_capped(decoder: impl Read, input_cut: bool, max: usize) -> Option<(Vec<u8>, bool)> {
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    match decoder.take(limit).read_to_end(&mut out) {
        Ok(_) => {
            let mut cut = false;
            let out = cap(out, max, &mut cut);
            Some((out, cut))
        }
        Err(_) if input_cut => {
            let mut cut = true;
            let out = cap(out, max, &mut cut);
            Some((out, cut))
        }
        Err(_) => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A complete response with `headers` (each "Name: value") and `body` as framed.
    pub(crate) fn raw_response(status: u16, headers: &[&str], body: &[u8]) -> Vec<u8> {
        let mut raw = format!("HTTP/1.1 {status} X\r\n").into_bytes();
        for h in headers {
            raw.extend_from_slice(format!("{h}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body);
        raw
    }

    /// A response carrying `body` with a Content-Length.
    pub(crate) fn with_length(status: u16, headers: &[&str], body: &[u8]) -> Vec<u8> {
        let length = format!("Content-Length: {}", body.len());
        let mut all: Vec<&str> = headers.to_vec();
        all.push(&length);
        raw_response(status, &all, body)
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A valid brotli stream built by hand (no brotli encoder is available here): window bits
    /// 16, one uncompressed meta-block holding `data` (at most 65536 bytes), then an empty last
    /// meta-block (RFC 7932 section 9.2).
    fn brotli_stored(data: &[u8]) -> Vec<u8> {
        let mlen = u32::try_from(data.len() - 1).unwrap();
        // Bit 0 WBITS=0, bit 1 ISLAST=0, bits 2-3 MNIBBLES=0 (4 nibbles), bits 4-19 MLEN-1,
        // bit 20 ISUNCOMPRESSED=1, padding to 24 bits.
        let bits = (mlen << 4) | (1 << 20);
        let mut out = bits.to_le_bytes()[..3].to_vec();
        out.extend_from_slice(data);
        out.push(0x03); // ISLAST=1, ISLASTEMPTY=1
        out
    }

    /// The brotli-decompressor crate's own test vector: "The quick brown fox jumps over the
    /// lazy dog" repeated to 176128 bytes, in 58 bytes.
    const QUICKFOX_BR: [u8; 58] = [
        0x5B, 0xFF, 0xAF, 0x02, 0xC0, 0x22, 0x79, 0x5C, 0xFB, 0x5A, 0x8C, 0x42, 0x3B, 0xF4, 0x25,
        0x55, 0x19, 0x5A, 0x92, 0x99, 0xB1, 0x35, 0xC8, 0x19, 0x9E, 0x9E, 0x0A, 0x7B, 0x4B, 0x90,
        0xB9, 0x3C, 0x98, 0xC8, 0x09, 0x40, 0xF3, 0xE6, 0xD9, 0x4D, 0xE4, 0x6D, 0x65, 0x1B, 0x27,
        0x87, 0x13, 0x5F, 0xA6, 0xE9, 0x30, 0x96, 0x7B, 0x3C, 0x15, 0xD8, 0x53, 0x1C,
    ];

    /// The same crate's compressed "XXXXXXXXXXYYYYYYYYYY".
    pub(crate) const TEN_X_TEN_Y_BR: [u8; 12] = [
        0x1b, 0x13, 0x00, 0x00, 0xa4, 0xb0, 0xb2, 0xea, 0x81, 0x47, 0x02, 0x8a,
    ];

    const JSON: &[u8] = br#"{"items":[{"id":1,"price":9.5}],"total":1}"#;

    fn decoded(raw: &[u8]) -> DecodedResponse {
        decode_response(raw, 1 << 20).unwrap()
    }

    #[test]
    fn plain_body_with_length() {
        let r = decoded(&with_length(200, &["Content-Type: application/json"], JSON));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.headers[0],
            ("Content-Type".into(), "application/json".into())
        );
        assert_eq!(r.body, JSON);
        assert!(!r.body_cut);
        assert_eq!(r.undecoded_encoding, None);
    }

    #[test]
    fn compressed_bodies_decode_to_their_plain_versions() {
        let plain = decoded(&with_length(200, &[], JSON));
        for (coding, body) in [
            ("gzip", gzip(JSON)),
            ("x-gzip", gzip(JSON)),
            ("deflate", zlib(JSON)),
            ("deflate", raw_deflate(JSON)),
            ("br", brotli_stored(JSON)),
            ("identity", JSON.to_vec()),
            ("gzip, br", brotli_stored(&gzip(JSON))),
        ] {
            let header = format!("Content-Encoding: {coding}");
            let r = decoded(&with_length(200, &[&header], &body));
            assert_eq!(r.body, plain.body, "{coding}");
            assert_eq!(r.undecoded_encoding, None, "{coding}");
            assert!(!r.body_cut, "{coding}");
        }
        let r = decoded(&with_length(
            200,
            &["Content-Encoding: br"],
            &TEN_X_TEN_Y_BR,
        ));
        assert_eq!(r.body, b"XXXXXXXXXXYYYYYYYYYY");
    }

    #[test]
    fn decompression_bomb_is_capped() {
        let raw = with_length(200, &["Content-Encoding: br"], &QUICKFOX_BR);
        let r = decode_response(&raw, 1000).unwrap();
        assert_eq!(r.body.len(), 1000);
        assert!(r.body.starts_with(b"The quick brown fox"));
        assert!(r.body_cut);
        let whole = decode_response(&raw, 1 << 20).unwrap();
        assert_eq!(whole.body.len(), 176_128);
        assert!(!whole.body_cut);
    }

    #[test]
    fn plain_body_over_the_cap_is_cut() {
        let r = decode_response(&with_length(200, &[], JSON), 5).unwrap();
        assert_eq!(r.body, &JSON[..5]);
        assert!(r.body_cut);
    }

    #[test]
    fn corrupt_or_unknown_encoding_keeps_raw_bytes() {
        let raw = with_length(200, &["Content-Encoding: gzip"], b"not gzip at all");
        let r = decoded(&raw);
        assert_eq!(r.body, b"not gzip at all");
        assert_eq!(r.undecoded_encoding.as_deref(), Some("gzip"));
        let r = decoded(&with_length(200, &["Content-Encoding: zstd"], b"abc"));
        assert_eq!(r.undecoded_encoding.as_deref(), Some("zstd"));
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn cut_gzip_keeps_what_decodes() {
        let big: Vec<u8> = (0..20_000u32)
            .flat_map(|i| i.to_string().into_bytes())
            .collect();
        let body = gzip(&big);
        let header = format!("Content-Length: {}", body.len());
        let raw = raw_response(
            200,
            &["Content-Encoding: gzip", &header],
            &body[..body.len() / 2],
        );
        let r = decoded(&raw);
        assert!(r.body_cut);
        assert_eq!(r.undecoded_encoding, None);
        assert!(!r.body.is_empty() && big.starts_with(&r.body));
    }

    #[test]
    fn chunked_with_trailers() {
        let body = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Checksum: abc\r\n\r\n";
        let r = decoded(&raw_response(200, &["Transfer-Encoding: chunked"], body));
        assert_eq!(r.body, b"Wikipedia");
        assert!(!r.body_cut);
    }

    #[test]
    fn chunked_gzip_decodes() {
        let gz = gzip(JSON);
        let (a, b) = gz.split_at(7);
        let mut body = format!("{:x}\r\n", a.len()).into_bytes();
        body.extend_from_slice(a);
        body.extend_from_slice(format!("\r\n{:x}\r\n", b.len()).as_bytes());
        body.extend_from_slice(b);
        body.extend_from_slice(b"\r\n0\r\n\r\n");
        let headers = ["Transfer-Encoding: gzip, chunked", "Content-Encoding: gzip"];
        let r = decoded(&raw_response(200, &headers, &body));
        assert_eq!(r.body, JSON);
    }

    #[test]
    fn cut_chunked_keeps_what_is_there() {
        let r = decoded(&raw_response(
            200,
            &["Transfer-Encoding: chunked"],
            b"4\r\nWiki\r\n5\r\npe",
        ));
        assert_eq!(r.body, b"Wikipe");
        assert!(r.body_cut);
        let r = decoded(&raw_response(
            200,
            &["Transfer-Encoding: chunked"],
            b"4\r\nWi",
        ));
        assert!(r.body_cut);
        let r = decoded(&raw_response(
            200,
            &["Transfer-Encoding: chunked"],
            b"zz\r\n",
        ));
        assert!(r.body_cut && r.body.is_empty());
    }

    #[test]
    fn short_content_length_body_is_cut() {
        let r = decoded(&raw_response(200, &["Content-Length: 10"], b"abc"));
        assert_eq!(r.body, b"abc");
        assert!(r.body_cut);
    }

    #[test]
    fn no_length_reads_to_end_and_204_has_no_body() {
        assert_eq!(
            decoded(&raw_response(200, &[], b"until close")).body,
            b"until close"
        );
        assert!(decoded(&raw_response(204, &[], b"junk")).body.is_empty());
    }

    #[test]
    fn interim_responses_are_skipped() {
        let mut raw = raw_response(100, &[], b"");
        raw.extend_from_slice(&with_length(201, &[], b"ok"));
        let r = decoded(&raw);
        assert_eq!((r.status, r.body.as_slice()), (201, &b"ok"[..]));
    }

    #[test]
    fn bad_heads_are_errors() {
        assert_eq!(
            decode_response(b"HTTP/1.1 200 OK\r\nA: b\r\n", 10),
            Err(DecodeError::IncompleteHead(23))
        );
        let err = decode_response(b"GARBAGE\r\n\r\n", 10).unwrap_err();
        assert!(
            err.to_string().starts_with("response head is not HTTP/1.x"),
            "{err}"
        );
        assert!(decode_response(b"", 10).is_err());
    }

    #[test]
    fn never_panics_on_prefixes_or_noise() {
        let gz_json = gzip(JSON);
        let samples = [
            with_length(200, &["Content-Encoding: gzip"], &gz_json),
            with_length(200, &["Content-Encoding: br"], &QUICKFOX_BR),
            with_length(200, &["Content-Encoding: deflate"], &zlib(JSON)),
            raw_response(
                200,
                &["Transfer-Encoding: chunked"],
                b"4\r\nWiki\r\n0\r\nT: 1\r\n\r\n",
            ),
            raw_response(
                200,
                &["Transfer-Encoding: chunked", "Content-Encoding: gzip"],
                b"ff\r\n",
            ),
        ];
        for raw in &samples {
            for end in 0..=raw.len() {
                let _ = decode_response(&raw[..end], 256);
            }
        }
        // Deterministic pseudo-random bytes after a valid head, and random heads.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..(round % 97) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state.to_le_bytes()[0]);
            }
            let coding = ["gzip", "br", "deflate", "gzip, br"][round % 4];
            let header = format!("Content-Encoding: {coding}");
            let _ = decode_response(&raw_response(200, &[&header], &bytes), 64);
            let _ = decode_response(
                &raw_response(200, &["Transfer-Encoding: chunked"], &bytes),
                64,
            );
            let _ = decode_response(&bytes, 64);
        }
    }
}
