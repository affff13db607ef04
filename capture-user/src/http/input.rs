//! The bytes of one direction on their way into messages, copied as little as possible.
//!
//! Most segments carry whole messages: while a segment is being framed, the input is the
//! segment itself and a message taken from it is a slice of the captured packet, with no
//! copy and no allocation. Whatever a segment leaves unframed, and any message still open
//! when it ends, is copied out before the next segment, so nothing keeps a captured packet's
//! memory alive beyond the call that framed it.

use std::ops::Deref;

use bytes::{Bytes, BytesMut};

/// Bytes received but not framed yet.
#[derive(Default)]
pub(super) struct Input {
    /// What is left of the segment being framed, while nothing was left over before it.
    fresh: Bytes,
    /// The whole segment `fresh` is part of (empty once it is held): pieces of one message
    /// taken from it one after the other are joined as one slice of it.
    segment: Bytes,
    /// What earlier segments left over (then `fresh` is empty).
    held: BytesMut,
}

impl Input {
    /// Appends a segment: kept as it is when nothing is waiting, else copied behind what is.
    pub(super) fn push(&mut self, segment: Bytes) {
        if self.fresh.is_empty() && self.held.is_empty() {
            self.segment = segment.clone();
            self.fresh = segment;
            return;
        }
        self.hold();
        self.held.extend_from_slice(&segment);
    }

    /// Copies what is left of the segment into memory of its own (end of a framing call).
    pub(super) fn hold(&mut self) {
        if !self.fresh.is_empty() {
            self.held.extend_from_slice(&self.fresh);
            self.fresh = Bytes::new();
        }
        self.segment = Bytes::new();
    }

    /// The segment being framed (empty when there is none).
    pub(super) fn segment(&self) -> &Bytes {
        &self.segment
    }

    /// Takes the first `n` bytes off (a slice of the segment when they come from one).
    pub(super) fn split_to(&mut self, n: usize) -> Bytes {
        if self.fresh.is_empty() {
            self.held.split_to(n).freeze()
        } else {
            self.fresh.split_to(n)
        }
    }

    /// Drops the first `n` bytes.
    pub(super) fn skip(&mut self, n: usize) {
        if self.fresh.is_empty() {
            let _ = self.held.split_to(n);
        } else {
            let _ = self.fresh.split_to(n);
        }
    }

    /// Drops everything buffered.
    pub(super) fn clear(&mut self) {
        self.fresh = Bytes::new();
        self.held.clear();
    }

    /// Takes everything buffered off.
    pub(super) fn take_all(&mut self) -> Bytes {
        self.split_to(self.len())
    }
}

impl Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.fresh.is_empty() {
            &self.held
        } else {
            &self.fresh
        }
    }
}

/// The bytes of a message in progress: one piece shared with the input while it arrives
/// whole, joined into memory of its own once it has more pieces.
#[derive(Default)]
pub(super) enum MessageBytes {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl MessageBytes {
    /// Bytes so far.
    pub(super) fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(b) => b.len(),
            Self::Many(b) => b.len(),
        }
    }

    /// Appends a piece. A piece that follows the one before it within `segment` (head, then
    /// body, from one captured segment) extends it as one slice: still no copy.
    pub(super) fn push(&mut self, piece: Bytes, segment: &Bytes) {
        match self {
            Self::Empty => *self = Self::One(piece),
            Self::One(first) if let Some(joined) = adjacent_within(first, &piece, segment) => {
                *self = Self::One(joined);
            }
            Self::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + piece.len());
                joined.extend_from_slice(first);
                joined.extend_from_slice(&piece);
                *self = Self::Many(joined);
            }
            Self::Many(joined) => joined.extend_from_slice(&piece),
        }
    }

    /// Copies a piece still shared with a captured packet into memory of its own (the
    /// message stays open past the segment that brought it).
    pub(super) fn own(&mut self) {
        if let Self::One(piece) = self {
            *self = Self::Many(BytesMut::from(&piece[..]));
        }
    }

    /// The whole message.
    pub(super) fn freeze(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(b) => b,
            Self::Many(b) => b.freeze(),
        }
    }
}

/// `first` and `next` as one slice of `segment`, when they lie in it one right after the other.
fn adjacent_within(first: &Bytes, next: &Bytes, segment: &Bytes) -> Option<Bytes> {
    let base = segment.as_ptr() as usize;
    let start = (first.as_ptr() as usize).checked_sub(base)?;
    let next_start = (next.as_ptr() as usize).checked_sub(base)?;
    let end = next_start.checked_add(next.len())?;
    (next_start == start + first.len() && end <= segment.len()).then(|| segment.slice(start..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_framed_whole_is_sliced_not_copied() {
        let segment = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\nGET /2");
        let mut input = Input::default();
        input.push(segment.clone());
        let first = input.split_to(18);
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
    fn message_pieces_join_and_stop_sharing_when_told() {
        let segment = Bytes::from_static(b"abcdefghi");
        let mut m = MessageBytes::default();
        m.push(segment.slice(0..3), &segment);
        m.push(segment.slice(3..5), &segment);
        assert!(
            matches!(&m, MessageBytes::One(b) if b.as_ptr() == segment.as_ptr() && b.len() == 5),
            "adjacent pieces of one segment stay one slice"
        );
        m.own();
        assert!(matches!(&m, MessageBytes::Many(_)));
        m.push(Bytes::from_static(b"XY"), &Bytes::new());
        assert_eq!(m.len(), 7);
        assert_eq!(m.freeze(), Bytes::from_static(b"abcdeXY"));

        // Not adjacent, or not within the segment: joined by copying.
        let mut m = MessageBytes::default();
        m.push(segment.slice(0..2), &segment);
        m.push(segment.slice(3..4), &segment);
        assert!(matches!(&m, MessageBytes::Many(_)));
        assert_eq!(m.freeze(), Bytes::from_static(b"abd"));
    }
}
