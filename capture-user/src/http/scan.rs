//! The quick read of a head: request and status lines and headers of the plain shape nearly
//! all traffic has (CRLF line ends, one space between the parts of the first line, `name:`
//! with no space before the colon, printable values), read in one pass that looks only at
//! the two headers framing needs. Reading heads was a fifth of the CPU of `capture record`,
//! most of it httparse collecting every header into a table we then searched. Anything else
//! (other whitespace, bare LF, obs-fold, control bytes, non-ASCII URIs, over
//! [`MAX_HEADERS`] headers, a head not ended yet) is left to httparse: this reader answers
//! only when it is sure httparse would give the same head, which a property test holds it to.

use super::HttpStats;
use super::head::{ContentLength, Head, MAX_HEADERS, framing_of};
use crate::message::MessageKind;

/// Reads a request head of the plain shape; `None` when httparse must decide.
pub(super) fn request(buf: &[u8], stats: &mut HttpStats) -> Option<Head> {
    let method_len = buf.iter().take(17).position(|&b| b == b' ')?;
    let method = &buf[..method_len];
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) {
        return None;
    }
    let uri_start = method_len + 1;
    let uri_end = uri_start + uri_len(&buf[uri_start..])?;
    if uri_end == uri_start || buf.get(uri_end) != Some(&b' ') {
        return None;
    }
    let (minor_version, line_end) = version_crlf(buf, uri_end + 1)?;
    let (len, te, cl) = headers(buf, line_end)?;
    let framing = framing_of(te, cl, stats, true);
    Some(Head {
        len,
        kind: MessageKind::Request {
            method: ascii_str(method).into(),
            uri: ascii_str(&buf[uri_start..uri_end]).into(),
        },
        minor_version,
        framing,
    })
}

/// Reads a response head of the plain shape; `None` when httparse must decide.
pub(super) fn response(buf: &[u8], stats: &mut HttpStats) -> Option<Head> {
    let minor_version = version(buf, 0)?;
    let code = buf.get(8..13)?;
    if code[0] != b' ' || code[4] != b' ' || !code[1..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code[1..4]
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    // The reason phrase: printable ASCII, spaces and tabs up to CRLF.
    let reason_end = printable_end(buf, 13);
    if buf.get(reason_end..reason_end + 2) != Some(b"\r\n") {
        return None;
    }
    let (len, te, cl) = headers(buf, reason_end + 2)?;
    let framing = framing_of(te, cl, stats, false);
    Some(Head {
        len,
        kind: MessageKind::Response { status },
        minor_version,
        framing,
    })
}

/// `HTTP/1.0` or `HTTP/1.1` at `at`: the minor version.
fn version(buf: &[u8], at: usize) -> Option<u8> {
    match buf.get(at..at + 8)? {
        b"HTTP/1.1" => Some(1),
        b"HTTP/1.0" => Some(0),
        _ => None,
    }
}

/// A version then CRLF at `at`: the minor version and where the next line starts.
fn version_crlf(buf: &[u8], at: usize) -> Option<(u8, usize)> {
    let minor = version(buf, at)?;
    (buf.get(at + 8..at + 10)? == b"\r\n").then_some((minor, at + 10))
}

/// Bytes the scans above admitted as a `str`: they let through ASCII only.
fn ascii_str(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: callers pass bytes the scans checked to be ASCII (upper-case letters for a
    // method, 0x21..=0x7E for a URI), and ASCII is UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Reads header lines from `at` to the empty line: the head's length, the last
/// Transfer-Encoding value and what the Content-Length headers say. Indexes `buf` directly:
/// this loop is most of the reading.
fn headers(buf: &[u8], mut at: usize) -> Option<(usize, Option<&[u8]>, ContentLength)> {
    let mut te = None;
    let mut cl = ContentLength::Absent;
    for _ in 0..=MAX_HEADERS {
        let name_start = at;
        at = name_end(buf, at);
        if at == name_start {
            // No name: the empty line that ends the head, or not the plain shape.
            return (buf.get(at..at + 2)? == b"\r\n").then_some((at + 2, te, cl));
        }
        if buf.get(at) != Some(&b':') {
            return None;
        }
        let name = &buf[name_start..at];
        at += 1;
        while matches!(buf.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        let value_start = at;
        at = printable_end(buf, at);
        if buf.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        let value = &buf[value_start..at];
        at += 2;
        // Only the two framing headers' values are used: only they are trimmed. A value here
        // holds tabs and 0x20..=0x7E only, so its ASCII whitespace is exactly OWS.
        match name.len() {
            14 if name_is(name, b"content-length") => {
                cl = cl.add(value.trim_ascii_end());
            }
            17 if name_is(name, b"transfer-encoding") => {
                te = Some(value.trim_ascii_end());
            }
            _ => {}
        }
    }
    // More headers than httparse is given room for: it counts the head as too large.
    None
}

/// Whether header name `name` is `lower` (lower-case letters and dashes) in any case, every
/// byte compared without a branch per byte. Setting bit 0x20 folds case exactly here: the
/// only byte besides a letter's two cases and `-` that it maps onto a lower-case letter or
/// `-` is CR (onto `-`), which no name holds.
fn name_is(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(name.iter().all(|&b| is_token(b)));
    name.len() == lower.len()
        && name
            .iter()
            .zip(lower)
            .fold(0, |diff, (&b, &l)| diff | ((b | 0x20) ^ l))
            == 0
}

/// Where the header name from `at` ends: at the first byte that is not a `tchar`, or at the
/// buffer's end. A block or a word at a time while they are letters, digits and dashes
/// (nearly every name is made of nothing else), one at a time through the other `tchar`s.
fn name_end(buf: &[u8], mut at: usize) -> usize {
    loop {
        at = run_end(buf, at, Class::LetterDigitDash);
        match buf.get(at) {
            Some(&b) if is_token(b) => at += 1,
            _ => return at,
        }
    }
}

/// The byte classes the scans run through a block or a word at a time.
#[derive(Clone, Copy)]
enum Class {
    /// ASCII letters, digits and dashes: nearly every header name.
    LetterDigitDash,
    /// 0x20..=0x7E: a value or reason phrase, up to a tab (the caller steps over it).
    Printable,
    /// 0x21..=0x7E: a URI here.
    Uri,
}

impl Class {
    /// Marks (high bits) of the word's bytes outside the class; the lowest is exact.
    #[inline(always)]
    fn word_stops(self, x: u64) -> u64 {
        match self {
            Class::LetterDigitDash => not_letter_digit_dash(x),
            Class::Printable => below(x, 0x20) | equal(x, 0x7F) | high(x),
            Class::Uri => below(x, 0x21) | equal(x, 0x7F) | high(x),
        }
    }

    /// Bits of the block's bytes outside the class.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn block_stops(self, block: &[u8; 16]) -> u32 {
        match self {
            Class::LetterDigitDash => sse2::not_letter_digit_dash(block),
            Class::Printable => sse2::not_printable(block),
            Class::Uri => sse2::not_uri(block),
        }
    }
}

/// Where the run of `class` bytes from `at` ends: at the first byte outside it, or where
/// fewer than eight bytes are left (the caller reads those one at a time). Sixteen bytes at
/// a time on x86_64, then eight.
#[inline(always)]
fn run_end(buf: &[u8], mut at: usize, class: Class) -> usize {
    #[cfg(target_arch = "x86_64")]
    while let Some(block) = buf.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        let stops = class.block_stops(block);
        if stops != 0 {
            return at + stops.trailing_zeros() as usize;
        }
        at += 16;
    }
    while let Some(word) = buf.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let stops = class.word_stops(u64::from_le_bytes(*word));
        if stops != 0 {
            return at + first_mark(stops);
        }
        at += 8;
    }
    at
}

/// Marks the bytes of a word that are not ASCII letters, digits or dashes. Exact for every
/// byte, not only up to the first mark: the tests run on the low seven bits of each byte,
/// where adding at most 0x7F carries into no other byte.
fn not_letter_digit_dash(x: u64) -> u64 {
    let low = x & !HIGHS;
    let folded = low | (ONES * 0x20);
    let letter = at_least(folded, b'a') & !at_least(folded, b'z' + 1);
    let digit = at_least(low, b'0') & !at_least(low, b'9' + 1);
    let dash = !at_least(low ^ (ONES * u64::from(b'-')), 1);
    (!(letter | digit | dash) | x) & HIGHS
}

/// Marks the bytes of `low` (each at most 0x7F) that are at least `n` (1..=0x80), exactly.
fn at_least(low: u64, n: u8) -> u64 {
    (low + ONES * u64::from(0x80 - n)) & HIGHS
}

/// Where the bytes from `at` that may be in a header value or reason phrase end: tab and
/// 0x20..=0x7E (bytes over 0x7F are left to httparse). A block or a word at a time while
/// none is a control byte or DEL: values are most of a head's bytes.
fn printable_end(buf: &[u8], mut at: usize) -> usize {
    loop {
        at = run_end(buf, at, Class::Printable);
        if buf.get(at) != Some(&b'\t') {
            break;
        }
        at += 1;
    }
    while let Some(&b) = buf.get(at) {
        if b != b'\t' && !(0x20..0x7F).contains(&b) {
            break;
        }
        at += 1;
    }
    at
}

/// Bytes at the start of `bytes` that may be in a URI here (0x21..=0x7E); `None` when they
/// run to the end (the line is not complete: httparse decides).
fn uri_len(bytes: &[u8]) -> Option<usize> {
    let at = run_end(bytes, 0, Class::Uri);
    let tail = bytes.get(at..)?;
    tail.iter()
        .position(|&b| !(0x21..0x7F).contains(&b))
        .map(|n| at + n)
}

/// Index of the first marked byte of a word (each mark is a byte's high bit). The tests
/// below mark exactly the right bytes up to the first true one; only bytes after it can be
/// marked wrongly (by a borrow), so the lowest mark is exact.
fn first_mark(marks: u64) -> usize {
    (marks.trailing_zeros() / 8) as usize
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Marks bytes below `n` (`n` at most 0x80).
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// Marks bytes equal to `b`.
fn equal(x: u64, b: u8) -> u64 {
    let y = x ^ (ONES * u64::from(b));
    y.wrapping_sub(ONES) & !y & HIGHS
}

/// Marks bytes over 0x7F.
fn high(x: u64) -> u64 {
    x & HIGHS
}

/// RFC 9110 `tchar`, what a header name is made of.
fn is_token(b: u8) -> bool {
    TOKEN[usize::from(b)]
}

/// Which bytes are `tchar`s, looked up once per header name byte.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#' | b'$' | b'%' | b'&')
            || matches!(
                c,
                b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        b += 1;
    }
    table
};

/// The same byte classes as the word tests above, sixteen bytes at a time (SSE2 is part of
/// x86_64): a compare per bound and one mask, where the word tests take a dozen operations
/// per eight bytes. Each returns one bit per byte, set where the byte stops the scan; the
/// word loops finish what is shorter than a block.
#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };

    // SAFETY (every `unsafe` below): SSE2 is part of the x86_64 baseline, so its intrinsics
    // run on every CPU this code is built for; the only load reads the 16 bytes `block`
    // borrows, and `loadu` takes any alignment.

    /// Bits of the bytes that are neither ASCII letters, digits nor dashes. The compares are
    /// signed: bytes over 0x7F are negative and fall below every bound.
    #[inline]
    pub(super) fn not_letter_digit_dash(block: &[u8; 16]) -> u32 {
        unsafe {
            let x = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let folded = _mm_or_si128(x, splat(0x20));
            let letter = _mm_and_si128(
                _mm_cmpgt_epi8(folded, splat(b'a' - 1)),
                _mm_cmplt_epi8(folded, splat(b'z' + 1)),
            );
            let digit = _mm_and_si128(
                _mm_cmpgt_epi8(x, splat(b'0' - 1)),
                _mm_cmplt_epi8(x, splat(b'9' + 1)),
            );
            let dash = _mm_cmpeq_epi8(x, splat(b'-'));
            let good = _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(letter, digit), dash));
            !(good as u32) & 0xFFFF
        }
    }

    /// Bits of the bytes that end a value's fast run: control bytes (tab included, the
    /// caller steps over it), DEL and bytes over 0x7F.
    #[inline]
    pub(super) fn not_printable(block: &[u8; 16]) -> u32 {
        below_or_del(block, 0x20)
    }

    /// Bits of the bytes that may not be in a URI here: below 0x21, DEL and over 0x7F.
    #[inline]
    pub(super) fn not_uri(block: &[u8; 16]) -> u32 {
        below_or_del(block, 0x21)
    }

    /// Bits of the bytes below `n`, over 0x7F (negative when signed) or DEL.
    #[inline]
    fn below_or_del(block: &[u8; 16], n: u8) -> u32 {
        unsafe {
            let x = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let low_or_high = _mm_cmplt_epi8(x, splat(n));
            let del = _mm_cmpeq_epi8(x, splat(0x7F));
            _mm_movemask_epi8(_mm_or_si128(low_or_high, del)) as u32
        }
    }

    #[inline]
    fn splat(b: u8) -> __m128i {
        unsafe { _mm_set1_epi8(b as i8) }
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
