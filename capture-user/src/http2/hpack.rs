//! HPACK (RFC 7541) header block decoder that knows what it does not know.
//!
//! A capture may start mid-connection or lose bytes, so the dynamic table's older
//! entries can be unknown. The decoder then holds only the entries inserted since it
//! lost track: those are the newest entries of the real table, so a reference into
//! them is exact, and a reference beyond them makes the block undecodable instead of
//! producing a guessed header.

use std::collections::VecDeque;

use loona_hpack::huffman::HuffmanDecoder;

/// One decoded header field, name and value as received.
pub(crate) type HeaderField = (Vec<u8>, Vec<u8>);

/// Per-entry overhead counted by RFC 7541 §4.1.
const ENTRY_OVERHEAD: usize = 32;
/// Initial value of SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
pub(crate) const DEFAULT_TABLE_SIZE: usize = 4096;
/// Table size assumed while no SETTINGS or size update told us the real limit.
pub(crate) const UNKNOWN_TABLE_LIMIT: usize = 64 * 1024;

/// Largest table we are willing to hold, whatever SETTINGS say; a size update beyond
/// it makes the context lost.
const MAX_TABLE_SIZE_CAP: usize = 1024 * 1024;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// How much of the peer's dynamic table we know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Knowledge {
    /// The whole table is known: seen from the connection start or since a size update to 0.
    Known,
    /// We hold only the newest entries, those inserted since we lost track.
    Partial,
    /// Not even the newest entries are known (an insertion of unknown size happened):
    /// every dynamic reference is undecodable until a size update to 0.
    Lost,
}

/// What decoding one header block gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BlockOutcome {
    /// Every field, in order.
    Fields(Vec<HeaderField>),
    /// Decoded (the table is in sync) but the header list exceeds the configured limit.
    TooLarge,
    /// A reference to a dynamic entry we do not hold: the fields are unknown.
    Undecodable,
    /// The block is not valid HPACK; the context is now lost.
    Failed,
}

/// The block is not valid HPACK (bad integer, bad Huffman, bad index, truncated, ...).
#[derive(Debug)]
struct InvalidBlock;

/// One representation of a header block, after applying it to the table.
enum Representation {
    Field(HeaderField),
    /// A field whose name or value is a dynamic entry we do not hold.
    Unknown,
    SizeUpdate,
}

/// Reads HPACK primitives (RFC 7541 §5) from a header block.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Result<u8, InvalidBlock> {
        let (&first, rest) = self.rest.split_first().ok_or(InvalidBlock)?;
        self.rest = rest;
        Ok(first)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], InvalidBlock> {
        if len > self.rest.len() {
            return Err(InvalidBlock);
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    /// An integer with an N-bit prefix; values beyond u32 are refused.
    fn integer(&mut self, prefix_bits: u32) -> Result<usize, InvalidBlock> {
        let prefix_max = (1u64 << prefix_bits) - 1;
        let mut value = u64::from(self.byte()?) & prefix_max;
        if value < prefix_max {
            return usize::try_from(value).map_err(|_| InvalidBlock);
        }
        let mut shift = 0u32;
        loop {
            let byte = self.byte()?;
            if shift > 28 {
                return Err(InvalidBlock);
            }
            value += u64::from(byte & 0x7f) << shift;
            if value > u64::from(u32::MAX) {
                return Err(InvalidBlock);
            }
            if byte & 0x80 == 0 {
                return usize::try_from(value).map_err(|_| InvalidBlock);
            }
            shift += 7;
        }
    }
}

/// One direction's HPACK decoding context.
pub(crate) struct HpackDecoder {
    /// Held dynamic entries, newest first.
    entries: VecDeque<HeaderField>,
    /// Sum of the held entries' sizes.
    size: usize,
    /// Eviction limit: exact when `Known`, an upper bound of the real one otherwise.
    max_size: usize,
    knowledge: Knowledge,
    /// Largest SETTINGS_HEADER_TABLE_SIZE the decoding peer advertised, if seen.
    settings_limit: Option<usize>,
    /// Whether `max_size` came from a size update since we lost track.
    size_update_seen: bool,
    /// Built on first use: its tables are not free to build.
    huffman: Option<HuffmanDecoder>,
}

impl HpackDecoder {
    /// A context seen from the connection start.
    pub(crate) fn new_known() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            knowledge: Knowledge::Known,
            settings_limit: Some(DEFAULT_TABLE_SIZE),
            size_update_seen: false,
            huffman: None,
        }
    }

    /// A context whose past is unknown (capture started mid-connection).
    pub(crate) fn new_unknown() -> Self {
        let mut decoder = Self::new_known();
        decoder.settings_limit = None;
        decoder.forget();
        decoder
    }

    /// How much of the table we know (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn knowledge(&self) -> Knowledge {
        self.knowledge
    }

    /// Blocks were missed (gap, resync, a skipped fragment): entries inserted by them
    /// are newer than ours, so we keep none and start collecting again. A lost context
    /// stays lost (only a size update to 0 recovers it).
    pub(crate) fn forget(&mut self) {
        self.clear();
        if self.knowledge != Knowledge::Lost {
            self.knowledge = Knowledge::Partial;
        }
        self.size_update_seen = false;
        self.max_size = self.unknown_bound();
    }

    /// A block we could not apply may have inserted entries of unknown size.
    pub(crate) fn lose(&mut self) {
        self.clear();
        self.knowledge = Knowledge::Lost;
    }

    /// The decoding peer advertised SETTINGS_HEADER_TABLE_SIZE.
    pub(crate) fn set_settings_limit(&mut self, limit: usize) {
        let limit = limit.min(MAX_TABLE_SIZE_CAP);
        let largest = self.settings_limit.map_or(limit, |old| old.max(limit));
        self.settings_limit = Some(largest);
        if self.knowledge == Knowledge::Partial && !self.size_update_seen {
            self.max_size = self.unknown_bound();
            self.evict();
        }
    }

    fn unknown_bound(&self) -> usize {
        self.settings_limit.unwrap_or(UNKNOWN_TABLE_LIMIT)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.size = 0;
    }

    /// Decodes one complete header block, updating the table whatever the outcome.
    pub(crate) fn decode_block(&mut self, block: &[u8], max_list_bytes: usize) -> BlockOutcome {
        let mut cursor = Cursor { rest: block };
        let mut fields = Vec::new();
        let mut list_bytes = 0usize;
        let mut unknown = false;
        let mut fields_started = false;
        while !cursor.rest.is_empty() {
            match self.representation(&mut cursor, fields_started) {
                Err(InvalidBlock) => {
                    self.lose();
                    return BlockOutcome::Failed;
                }
                Ok(Representation::SizeUpdate) => {}
                Ok(Representation::Unknown) => {
                    fields_started = true;
                    unknown = true;
                }
                Ok(Representation::Field(field)) => {
                    fields_started = true;
                    list_bytes =
                        list_bytes.saturating_add(field.0.len() + field.1.len() + ENTRY_OVERHEAD);
                    if list_bytes <= max_list_bytes && !unknown {
                        fields.push(field);
                    }
                }
            }
        }
        if unknown {
            BlockOutcome::Undecodable
        } else if list_bytes > max_list_bytes {
            BlockOutcome::TooLarge
        } else {
            BlockOutcome::Fields(fields)
        }
    }

    fn representation(
        &mut self,
        cursor: &mut Cursor<'_>,
        fields_started: bool,
    ) -> Result<Representation, InvalidBlock> {
        let first = *cursor.rest.first().ok_or(InvalidBlock)?;
        if first & 0x80 != 0 {
            let index = cursor.integer(7)?;
            return Ok(match self.lookup(index)? {
                Some(field) => Representation::Field(field),
                None => Representation::Unknown,
            });
        }
        if first & 0xe0 == 0x20 {
            // RFC 7541 §4.2: size updates come first in a block.
            if fields_started {
                return Err(InvalidBlock);
            }
            let size = cursor.integer(5)?;
            self.size_update(size)?;
            return Ok(Representation::SizeUpdate);
        }
        let (prefix_bits, indexing) = if first & 0xc0 == 0x40 {
            (6, true)
        } else {
            (4, false)
        };
        let name_index = cursor.integer(prefix_bits)?;
        let name = if name_index == 0 {
            Some(self.string(cursor)?)
        } else {
            self.lookup(name_index)?.map(|(name, _)| name)
        };
        let value = self.string(cursor)?;
        if indexing {
            self.insert(name.as_deref(), &value);
        }
        Ok(match name {
            Some(name) => Representation::Field((name, value)),
            None => Representation::Unknown,
        })
    }

    /// The entry at `index`; `None` if it is a dynamic entry we do not hold.
    fn lookup(&self, index: usize) -> Result<Option<HeaderField>, InvalidBlock> {
        if index == 0 {
            return Err(InvalidBlock);
        }
        if let Some((name, value)) = STATIC_TABLE.get(index - 1) {
            return Ok(Some((name.to_vec(), value.to_vec())));
        }
        let dynamic = index - 1 - STATIC_TABLE.len();
        match self.entries.get(dynamic) {
            Some(entry) => Ok(Some(entry.clone())),
            // With the whole table known, a reference beyond it is an encoding error.
            None if self.knowledge == Knowledge::Known => Err(InvalidBlock),
            None => Ok(None),
        }
    }

    fn string(&mut self, cursor: &mut Cursor<'_>) -> Result<Vec<u8>, InvalidBlock> {
        let huffman = cursor.rest.first().is_some_and(|b| b & 0x80 != 0);
        let len = cursor.integer(7)?;
        let raw = cursor.take(len)?;
        if !huffman {
            return Ok(raw.to_vec());
        }
        self.huffman
            .get_or_insert_with(HuffmanDecoder::new)
            .decode(raw)
            .map_err(|_| InvalidBlock)
    }

    fn insert(&mut self, name: Option<&[u8]>, value: &[u8]) {
        match (self.knowledge, name) {
            (Knowledge::Lost, _) => {}
            // The new entry's size is unknown, so eviction can no longer be tracked.
            (_, None) => self.lose(),
            (_, Some(name)) => {
                let entry_size = name.len() + value.len() + ENTRY_OVERHEAD;
                if entry_size > self.max_size {
                    // RFC 7541 §4.4: an entry larger than the table empties it.
                    self.clear();
                    return;
                }
                self.entries.push_front((name.to_vec(), value.to_vec()));
                self.size += entry_size;
                self.evict();
            }
        }
    }

    fn size_update(&mut self, new_size: usize) -> Result<(), InvalidBlock> {
        if new_size > self.unknown_bound() {
            return Err(InvalidBlock);
        }
        if new_size == 0 {
            // The real table is now empty too: we know all of it again.
            self.clear();
            self.knowledge = Knowledge::Known;
        }
        self.max_size = new_size;
        self.size_update_seen = true;
        self.evict();
        Ok(())
    }

    /// Our entries are the newest of the real table, so evicting them by the (exact or
    /// larger) limit never drops an entry the real table still has.
    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.entries.pop_back() {
                Some((name, value)) => self.size -= name.len() + value.len() + ENTRY_OVERHEAD,
                None => self.size = 0,
            }
        }
    }
}
