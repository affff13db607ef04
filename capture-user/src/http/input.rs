//! The bytes of one direction on their way into messages, copied as little as possible.
//!
//! Most segments carry whole messages: while a segment is being framed, the input is the
//! segment itself and a message taken from it is a slice of the captured packet, with no
//! copy and no allocation. Whatever a segment leaves unframed, and any message still open
//! when it ends, is copied out before the next segment, so nothing keeps a captured packet's
//! memory alive beyond the call that framed it.

use std::ops::{Deref, Range};

use bytes::{Buf as _, Bytes, BytesMut};

/// Bytes received but not framed yet.
#[derive(Default)]
pub(super) struct Input {
    /// The segment being framed, while nothing was left over before it (then `held` is
    /// empty): pieces of messages are ranges of it until a message is emitted, so a message
    /// that arrives whole costs one reference to the segment, not one per piece. Kept until
    /// the framing call ends ([`Input::hold`]) so those ranges stay valid.
    segment: Bytes,
    /// How much of `segment` is framed already.
    start: usize,
    /// What earlier segments left over (then nothing of `segment` is left).
    held: BytesMut,
}

/// Bytes taken off the input for a message.
pub(super) enum Piece {
    /// A range of the segment being framed.
    Span(Range<usize>),
    /// Bytes apart from the segment's ranges: held over from earlier segments, or the
    /// rest of the input taken at once (a message keeping them past the framing call
    /// copies them then, see [`MessageBytes::own`]).
    Owned(Bytes),
}

impl Piece {
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Span(r) => r.len(),
            Self::Owned(b) => b.len(),
        }
    }

    /// Keeps the first `n` bytes.
    pub(super) fn truncate(&mut self, n: usize) {
        match self {
            Self::Span(r) => r.end = r.end.min(r.start + n),
            Self::Owned(b) => b.truncate(n),
        }
    }

    /// The bytes, `segment` being the input's segment.
    fn bytes<'a>(&'a self, segment: &'a Bytes) -> &'a [u8] {
        match self {
            Self::Span(r) => &segment[r.clone()],
            Self::Owned(b) => b,
        }
    }
}

impl Input {
    /// Appends a segment: kept as it is when nothing is waiting, else copied behind what is.
    pub(super) fn push(&mut self, segment: Bytes) {
        if self.is_empty() {
            self.segment = segment;
            self.start = 0;
            return;
        }
        self.hold();
        self.held.extend_from_slice(&segment);
    }

    /// True while framing reads the segment itself.
    fn reading_segment(&self) -> bool {
        self.start < self.segment.len()
    }

    /// Copies what is left of the segment into memory of its own and lets the segment go
    /// (end of a framing call).
    pub(super) fn hold(&mut self) {
        if self.reading_segment() {
            self.held.extend_from_slice(&self.segment[self.start..]);
        }
        self.segment = Bytes::new();
        self.start = 0;
    }

    /// The segment being framed (empty when there is none).
    pub(super) fn segment(&self) -> &Bytes {
        &self.segment
    }

    /// The bytes of a message that just ended. When they are the whole segment and nothing of
    /// it is left to read (one message per segment: nearly always), the segment itself is
    /// handed over, sparing the shared buffer's reference count an increment and a decrement
    /// (atomic, and a few per cent of framing).
    pub(super) fn finish_message(&mut self, bytes: MessageBytes) -> Bytes {
        let whole = matches!(&bytes, MessageBytes::Span(r)
            if r.start == 0 && r.end == self.segment.len() && self.start == r.end);
        if whole {
            self.start = 0;
            return std::mem::take(&mut self.segment);
        }
        bytes.freeze(&self.segment)
    }

    /// Takes the first `n` bytes off (a range of the segment when they come from it).
    pub(super) fn take(&mut self, n: usize) -> Piece {
        if self.reading_segment() {
            let end = (self.start + n).min(self.segment.len());
            let range = self.start..end;
            self.start = end;
            Piece::Span(range)
        } else {
            Piece::Owned(self.held.split_to(n.min(self.held.len())).freeze())
        }
    }

    /// Drops the first `n` bytes.
    pub(super) fn skip(&mut self, n: usize) {
        if self.reading_segment() {
            self.start = (self.start + n).min(self.segment.len());
        } else {
            self.held.advance(n.min(self.held.len()));
        }
    }

    /// Drops everything buffered (the segment stays referenced until [`Input::hold`]).
    pub(super) fn clear(&mut self) {
        self.start = self.segment.len();
        self.held.clear();
    }

    /// Takes everything buffered off, as bytes of their own or a slice of the segment.
    pub(super) fn take_all(&mut self) -> Bytes {
        if self.reading_segment() {
            let rest = self.segment.slice(self.start..);
            self.start = self.segment.len();
            rest
        } else {
            self.held.split().freeze()
        }
    }
}

impl Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.reading_segment() {
            &self.segment[self.start..]
        } else {
            &self.held
        }
    }
}

/// The bytes of a message in progress: a range of the input's segment while it arrives
/// whole within one framing call, joined into memory of its own once it has more pieces.
#[derive(Default)]
pub(super) enum MessageBytes {
    #[default]
    Empty,
    /// A range of the input's segment (only during the framing call that took it).
    Span(Range<usize>),
    One(Bytes),
    Many(BytesMut),
}

impl MessageBytes {
    /// Bytes so far.
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::Span(r) => r.len(),
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    /// Appends a piece. A range that follows the one before it (head, then body, from one
    /// captured segment) extends it: still no copy and no reference taken.
    pub(super) fn push(&mut self, piece: Piece, segment: &Bytes) {
        if piece.len() == 0 && !matches!(self, Self::Empty) {
            return;
        }
        match (&mut *self, piece) {
            (Self::Empty, Piece::Span(r)) => *self = Self::Span(r),
            (Self::Empty, Piece::Owned(b)) => *self = Self::One(b),
            (Self::Span(first), Piece::Span(r)) if first.end == r.start => first.end = r.end,
            (Self::Many(joined), piece) => joined.extend_from_slice(piece.bytes(segment)),
            (_, piece) => {
                let mut joined = BytesMut::from(self.bytes(segment));
                joined.extend_from_slice(piece.bytes(segment));
                *self = Self::Many(joined);
            }
        }
    }

    /// The bytes so far, `segment` being the input's segment.
    fn bytes<'a>(&'a self, segment: &'a Bytes) -> &'a [u8] {
        match self {
            Self::Empty => &[],
            Self::Span(r) => &segment[r.clone()],
            Self::One(b) => b,
            Self::Many(b) => b,
        }
    }

    /// Copies bytes still in the input's segment (or shared with it) into memory of their
    /// own: the message stays open past the framing call that brought them.
    pub(super) fn own(&mut self, segment: &Bytes) {
        if matches!(self, Self::Span(_) | Self::One(_)) {
            *self = Self::Many(BytesMut::from(self.bytes(segment)));
        }
    }

    /// The whole message, `segment` being the input's segment.
    pub(super) fn freeze(self, segment: &Bytes) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::Span(r) => segment.slice(r),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_framed_whole_is_ranged_not_copied() {
        let segment = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\nGET /2");
        let mut input = Input::default();
        input.push(segment.clone());
        let mut first = MessageBytes::default();
        first.push(input.take(18), input.segment());
        assert!(matches!(first, MessageBytes::Span(ref r) if *r == (0..18)));
        let first = first.freeze(input.segment());
        assert_eq!(first.as_ptr(), segment.as_ptr(), "a slice of the segment");
        assert_eq!(&*input, b"GET /2");
        input.hold();
        input.push(Bytes::from_static(b" HTTP/1.1\r\n\r\n"));
        assert_eq!(&*input, b"GET /2 HTTP/1.1\r\n\r\n");
        assert_eq!(
            input.take_all(),
            Bytes::from_static(b"GET /2 HTTP/1.1\r\n\r\n")
        );
        assert!(input.is_empty());
    }

    #[test]
    fn a_message_that_is_its_whole_segment_takes_the_segment_itself() {
        let segment = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n");
        let mut input = Input::default();
        input.push(segment.clone());
        let mut message = MessageBytes::default();
        message.push(input.take(segment.len()), input.segment());
        let bytes = input.finish_message(message);
        assert_eq!(bytes, segment);
        assert_eq!(bytes.as_ptr(), segment.as_ptr());
        assert!(input.is_empty() && input.segment().is_empty());
        input.push(Bytes::from_static(b"next"));
        assert_eq!(&*input, b"next", "the input goes on with the next segment");

        // Two messages in one segment: the first is a slice, the input keeps the rest.
        let pipelined = Bytes::from_static(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
        let mut input = Input::default();
        input.push(pipelined.clone());
        let mut first = MessageBytes::default();
        first.push(input.take(19), input.segment());
        assert_eq!(&input.finish_message(first)[..], &pipelined[..19]);
        assert_eq!(&*input, &pipelined[19..]);
    }

    #[test]
    fn message_pieces_join_and_stop_sharing_when_told() {
        let segment = Bytes::from_static(b"abcdefghi");
        let mut m = MessageBytes::default();
        m.push(Piece::Span(0..3), &segment);
        m.push(Piece::Span(3..5), &segment);
        assert!(
            matches!(&m, MessageBytes::Span(r) if *r == (0..5)),
            "adjacent ranges of one segment stay one range"
        );
        m.own(&segment);
        assert!(matches!(&m, MessageBytes::Many(_)));
        m.push(Piece::Owned(Bytes::from_static(b"XY")), &Bytes::new());
        assert_eq!(m.len(), 7);
        assert_eq!(m.freeze(&Bytes::new()), Bytes::from_static(b"abcdeXY"));

        // Not adjacent: joined by copying.
        let mut m = MessageBytes::default();
        m.push(Piece::Span(0..2), &segment);
        m.push(Piece::Span(3..4), &segment);
        assert!(matches!(&m, MessageBytes::Many(_)));
        assert_eq!(m.freeze(&segment), Bytes::from_static(b"abd"));

        // Owned bytes then a range, and a range cut at a limit.
        let mut m = MessageBytes::default();
        m.push(Piece::Owned(Bytes::from_static(b"12")), &segment);
        let mut piece = Piece::Span(4..9);
        piece.truncate(2);
        m.push(piece, &segment);
        assert_eq!(m.freeze(&segment), Bytes::from_static(b"12ef"));
    }

    #[test]
    fn held_bytes_are_taken_skipped_and_cleared_without_the_segment() {
        let mut input = Input::default();
        input.push(Bytes::from_static(b"abc"));
        input.skip(1);
        input.hold();
        input.push(Bytes::from_static(b"def"));
        assert_eq!(&*input, b"bcdef");
        input.skip(2);
        assert!(matches!(input.take(2), Piece::Owned(b) if b == "de"));
        input.clear();
        assert!(input.is_empty());
        // A fresh segment after clearing is read in place again.
        input.push(Bytes::from_static(b"xyz"));
        assert!(matches!(input.take(1), Piece::Span(r) if r == (0..1)));
    }
}
