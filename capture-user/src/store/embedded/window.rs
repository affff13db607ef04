//! The reading end of the log: a recording's window `[start, end)` read in offset order,
//! without locks and without writing anything (reading works on a full disk).
//!
//! The segment holding `start` is found by name (the last base at or before it), the batch by
//! the segment's sparse index; batches whose tags lack the recording are skipped by their
//! checked heads without reading their payloads. A torn batch at the very end of the last
//! segment is a write in progress (or one a dead writer left): it is treated as not written.

use std::path::Path;

use super::batch::Frame;
use super::record::{Reader, Shared};
use super::segment::{self, Next, SegmentReader, corrupt};
use crate::store::{StoreError, StoredMessage};

/// Offset after the last whole batch a reader sees (1 for an empty log).
pub fn tail(dir: &Path) -> Result<u64, StoreError> {
    let bases = segment::list(dir)?;
    let Some(&last) = bases.last() else {
        return Ok(1);
    };
    let seg = SegmentReader::open(dir, last, true)?;
    let (mut position, mut next) = seg.seek(dir, u64::MAX);
    while let Next::Batch(frame) = seg.next_at(position)? {
        position += frame.head.batch_len();
        next = frame.head.end_offset();
    }
    Ok(next)
}

/// Calls `visit(segment, position, frame)` for each batch holding offsets at or after `from`
/// and starting before `until`, in order, until it returns false.
pub fn scan(
    dir: &Path,
    from: u64,
    until: Option<u64>,
    visit: &mut dyn FnMut(&SegmentReader, u64, &Frame) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let bases = segment::list(dir)?;
    let first = bases.partition_point(|&b| b <= from).saturating_sub(1);
    let mut expect = None;
    for (i, &base) in bases.iter().enumerate().skip(first) {
        if until.is_some_and(|u| base >= u) {
            break;
        }
        let seg = SegmentReader::open(dir, base, i + 1 == bases.len())?;
        let (mut position, mut next) = if i == first {
            seg.seek(dir, from)
        } else {
            (0, base)
        };
        if let Some(e) = expect
            && e != base
        {
            return Err(corrupt(
                &seg.path,
                0,
                format!("the segment before ends at offset {e}: a segment is missing"),
            ));
        }
        loop {
            let frame = match seg.next_at(position)? {
                Next::Batch(frame) => frame,
                Next::End => break,
                Next::Torn(_) => return Ok(()),
            };
            let head = &frame.head;
            if head.base_offset != next {
                return Err(corrupt(
                    &seg.path,
                    position,
                    format!(
                        "batch starts at offset {}, expected {next}",
                        head.base_offset
                    ),
                ));
            }
            if until.is_some_and(|u| head.base_offset >= u) {
                return Ok(());
            }
            if head.end_offset() > from && !visit(&seg, position, &frame)? {
                return Ok(());
            }
            position += head.batch_len();
            next = head.end_offset();
        }
        expect = Some(next);
    }
    Ok(())
}

/// Calls `visit` with each message of recording `name` in `[start, end)` (to the log's end
/// when `end` is None) until it returns false.
pub fn read(
    dir: &Path,
    name: &str,
    start: u64,
    end: Option<u64>,
    visit: &mut dyn FnMut(StoredMessage) -> bool,
) -> Result<(), StoreError> {
    scan(dir, start, end, &mut |seg, position, frame| {
        if !frame.tags.contains(name) {
            return Ok(true);
        }
        let Some(records) = seg.records(position, frame)? else {
            return Ok(false);
        };
        let bad = |m: String| corrupt(&seg.path, position, m);
        let shared = Shared {
            node: &frame.tags.node,
            run: frame.tags.run,
            recordings: &frame.tags.recordings,
        };
        let mut reader = Reader::new(records);
        for offset in frame.head.base_offset..frame.head.end_offset() {
            if offset < start {
                reader.skip().map_err(bad)?;
                continue;
            }
            if end.is_some_and(|e| offset >= e) {
                return Ok(false);
            }
            let (meta, bytes) = reader.next_message(&shared).map_err(bad)?;
            if !visit(StoredMessage { meta, bytes }) {
                return Ok(false);
            }
        }
        if !reader.is_done() {
            return Err(bad(format!(
                "payload holds more than its {} messages",
                frame.head.count
            )));
        }
        Ok(true)
    })
}

/// Messages and wire bytes of recording `name` readable in `[start, end)`, from batch heads
/// (payloads are read only for a batch the window cuts, and for the log's last batch, which
/// must check to count).
pub fn count(dir: &Path, name: &str, start: u64, end: u64) -> Result<(u64, u64), StoreError> {
    let (mut messages, mut bytes) = (0u64, 0u64);
    scan(dir, start, Some(end), &mut |seg, position, frame| {
        if !frame.tags.contains(name) {
            return Ok(true);
        }
        let head = &frame.head;
        let inside = head.base_offset >= start && head.end_offset() <= end;
        let last = seg.last && position + head.batch_len() == seg.len;
        if inside && !last {
            messages += u64::from(head.count);
            bytes += head.wire_bytes;
            return Ok(true);
        }
        let Some(records) = seg.records(position, frame)? else {
            return Ok(false);
        };
        let mut reader = Reader::new(records);
        for offset in head.base_offset..head.end_offset() {
            let wire = reader.skip().map_err(|m| corrupt(&seg.path, position, m))?;
            if (start..end).contains(&offset) {
                messages += 1;
                bytes += wire as u64;
            }
        }
        Ok(true)
    })?;
    Ok((messages, bytes))
}
