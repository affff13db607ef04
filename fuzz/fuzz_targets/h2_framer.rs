//! Fuzzes the HTTP/2 framer (frames, HPACK, streams) with arbitrary bytes on both directions,
//! gaps and close. Run: `cargo xtask fuzz h2_framer --seconds 600`.
//! Checks (inside `fuzz_one`): no panic, and what is emitted stays within what was fed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    capture_user::http2::fuzz_one(data);
});
