//! Fuzzes the HTTP framer with arbitrary bytes on both directions, gaps and close.
//! Run: `cargo xtask fuzz framer --seconds 60` (or `cd fuzz && cargo +nightly fuzz run framer`).
//! Checks: no panic, and the framer never emits more bytes than it was fed.
#![no_main]

use capture_user::http::{ConnectionFramer, HttpConfig, HttpStats, IdAllocator};
use capture_user::packet::Timestamp;
use capture_user::reassembly::FlowDir;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let config = HttpConfig {
        max_header_bytes: 4096,
        max_message_bytes: 1 << 16,
    };
    let mut framer = ConnectionFramer::new(config, control & 1 == 1);
    let mut ids = IdAllocator::default();
    let mut stats = HttpStats::default();
    let mut out = Vec::new();
    let mut fed = 0usize;
    let mut ts = 0;
    // Records: [op, len] then len bytes. op bit 0: direction; op 0xff: gap.
    while rest.len() >= 2 {
        let (op, len) = (rest[0], rest[1] as usize);
        rest = &rest[2..];
        let dir = if op & 1 == 0 {
            FlowDir::ToServer
        } else {
            FlowDir::ToClient
        };
        ts += 1;
        if op == 0xff {
            framer.gap(dir, Timestamp(ts), &mut stats, &mut out);
            continue;
        }
        let n = len.min(rest.len());
        framer.data(
            dir,
            Timestamp(ts),
            bytes::Bytes::copy_from_slice(&rest[..n]),
            &mut ids,
            &mut stats,
            &mut out,
        );
        fed += n;
        rest = &rest[n..];
    }
    framer.close(Timestamp(ts + 1), &mut ids, &mut stats, &mut out);
    let emitted: usize = out.iter().map(|m| m.bytes.len()).sum();
    assert!(emitted <= fed, "emitted {emitted} bytes from {fed}");
});
