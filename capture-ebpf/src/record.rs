//! Writing one record into a ring: a fixed header, then up to [`CHUNK_LEN`] bytes loaded
//! straight from their source (a packet, or a process's memory for TLS plaintext) into the
//! reserved record. One copy; the record size is one of [`RECORD_DATA_SIZES`] because the
//! verifier needs a constant, so the bytes past the data are slack the reader ignores.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    maps::RingBuf,
};
use capture_common::{CHUNK_LEN, RECORD_DATA_SIZES};

/// Where a record's data is loaded from.
pub(crate) trait Source {
    /// Copies `len` bytes from `offset` into `dst`; false when the bytes cannot be read.
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
}

/// Why a record could not be written.
#[derive(Clone, Copy)]
pub(crate) enum Lost {
    /// The ring had no room.
    RingFull,
    /// The source refused the copy.
    CopyFailed,
}

/// Batched wake-ups: a record of `len` bytes wakes the reader only when it takes `ring`'s
/// fill level across a multiple of `step` (a power of two); otherwise the reader finds it on
/// its next timed poll. Waking on every record once the ring is that full (what a threshold
/// alone does while the reader lags) costs an interrupt per record, more than the copy.
#[inline(always)]
pub(crate) fn wakeup_flags(ring: &RingBuf, len: u64, step: u64) -> u64 {
    let before = ring.query(BPF_RB_AVAIL_DATA as u64);
    // Close enough: ring record headers and size-class slack are left out.
    let after = before + len;
    // With a power-of-two step, a multiple lies in (before, after] exactly when the two
    // differ in a bit at or above the step's.
    if before ^ after >= step {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Writes a last (or only) chunk, `len` bytes (1..=CHUNK_LEN) from `offset`, into the
/// smallest record size of [`RECORD_DATA_SIZES`] that holds it.
#[inline(always)]
pub(crate) fn emit_last<H: Copy, S: Source>(
    ring: &RingBuf,
    header: &H,
    src: &S,
    offset: u32,
    len: u32,
    wakeup: u64,
) -> Result<(), Lost> {
    const SIZES: [u32; 9] = RECORD_DATA_SIZES;
    if len <= SIZES[0] {
        emit::<H, S, { SIZES[0] as usize }>(ring, header, src, offset, len, wakeup)
    } else if len <= SIZES[1] {
        emit::<H, S, { SIZES[1] as usize }>(ring, header, src, offset, len, wakeup)
    } else if len <= SIZES[2] {
        emit::<H, S, { SIZES[2] as usize }>(ring, header, src, offset, len, wakeup)
    } else if len <= SIZES[3] {
        emit::<H, S, { SIZES[3] as usize }>(ring, header, src, offset, len, wakeup)
    } else if len <= SIZES[4] {
        emit::<H, S, { SIZES[4] as usize }>(ring, header, src, offset, len, wakeup)
    } else if len <= SIZES[5] {
        emit::<H, S, { SIZES[5] as usize }>(ring, header, src, offset, len, wakeup)
    } else if len <= SIZES[6] {
        emit::<H, S, { SIZES[6] as usize }>(ring, header, src, offset, len, wakeup)
    } else if len <= SIZES[7] {
        emit::<H, S, { SIZES[7] as usize }>(ring, header, src, offset, len, wakeup)
    } else {
        emit::<H, S, { SIZES[8] as usize }>(ring, header, src, offset, len, wakeup)
    }
}

/// Writes a full [`CHUNK_LEN`] chunk from `offset`.
#[inline(always)]
pub(crate) fn emit_full<H: Copy, S: Source>(
    ring: &RingBuf,
    header: &H,
    src: &S,
    offset: u32,
    wakeup: u64,
) -> Result<(), Lost> {
    emit::<H, S, { CHUNK_LEN as usize }>(ring, header, src, offset, CHUNK_LEN, wakeup)
}

/// Writes a record holding only `header` (no data).
#[inline(always)]
pub(crate) fn emit_header<H: Copy>(ring: &RingBuf, header: &H) -> Result<(), Lost> {
    let Some(mut record) = ring.reserve_bytes(core::mem::size_of::<H>(), 0) else {
        return Err(Lost::RingFull);
    };
    // SAFETY: ring records are 8-byte aligned (the headers' alignment) and this one is
    // exactly a header long.
    unsafe { record.as_mut_ptr().cast::<H>().write(*header) };
    record.submit(0);
    Ok(())
}

/// Reserves a record of the header and `N` data bytes, writes `header` into it and loads
/// `len` bytes (1..=N) from `offset` of `src` behind it; submits it, or discards it when the
/// load fails.
#[inline(always)]
fn emit<H: Copy, S: Source, const N: usize>(
    ring: &RingBuf,
    header: &H,
    src: &S,
    offset: u32,
    len: u32,
    wakeup: u64,
) -> Result<(), Lost> {
    let header_len = core::mem::size_of::<H>();
    let Some(mut record) = ring.reserve_bytes(header_len + N, 0) else {
        return Err(Lost::RingFull);
    };
    let base = record.as_mut_ptr();
    // SAFETY: ring records are 8-byte aligned (the headers' alignment) and this one is
    // header_len + N bytes long.
    unsafe { base.cast::<H>().write(*header) };
    // SAFETY: the data area starts right after the header, inside the record.
    let data = unsafe { base.add(header_len) };
    if !src.load(offset, data, bounded_len::<N>(len)) {
        record.discard(BPF_RB_NO_WAKEUP as u64);
        return Err(Lost::CopyFailed);
    }
    record.submit(wakeup);
    Ok(())
}

/// `len` (already 1..=N) written so the verifier can see it lies in 1..=N: the load helper
/// must not write past the record, and a length it cannot bound is rejected.
#[inline(always)]
fn bounded_len<const N: usize>(len: u32) -> u32 {
    // The optimiser knows len <= N from the size choice and would drop the mask and the
    // clamp below; the verifier may not know it (it tracked another register), so hide it.
    let len = core::hint::black_box(len);
    let mask = (N as u32).next_power_of_two() - 1;
    let len = ((len.wrapping_sub(1)) & mask) + 1;
    if len > N as u32 { N as u32 } else { len }
}
