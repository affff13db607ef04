//! Fuzzes TCP reassembly and framing (the real `Pipeline`) with arbitrary segments of two
//! connections. Run: `cargo xtask fuzz reassembler --seconds 60`.
//! Checks: no panic, held bytes stay within the caps, output never exceeds input.
#![no_main]

use std::net::SocketAddr;

use bytes::Bytes;
use capture_user::decode::{TcpFlags, TcpSegment};
use capture_user::packet::Timestamp;
use capture_user::pipeline::{Pipeline, PipelineConfig};
use capture_user::reassembly::ReassemblyConfig;
use libfuzzer_sys::fuzz_target;

const CAP: usize = 1 << 14;

fuzz_target!(|data: &[u8]| {
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: vec![80],
        reassembly: ReassemblyConfig {
            max_connections: 4,
            max_buffered_per_direction: CAP,
            max_buffered_total: 2 * CAP,
            idle_timeout_ns: 1_000_000_000,
        },
        ..PipelineConfig::default()
    });
    let endpoints: [SocketAddr; 3] = [
        "10.0.0.1:40000".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
        "10.0.0.3:40001".parse().unwrap(),
    ];
    let mut out = Vec::new();
    let (mut fed, mut emitted) = (0usize, 0usize);
    let mut rest = data;
    let mut ts = 0u64;
    // Records: [who, flags, seq(4), ts_step, len] then len bytes.
    while rest.len() >= 8 {
        let who = rest[0] as usize;
        let flags = rest[1];
        let seq = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
        ts += u64::from(rest[6]) * 10_000_000;
        let len = (rest[7] as usize).min(rest.len() - 8);
        let payload = Bytes::copy_from_slice(&rest[8..8 + len]);
        rest = &rest[8 + len..];
        let (src, dst) = match who % 4 {
            0 => (endpoints[0], endpoints[1]),
            1 => (endpoints[1], endpoints[0]),
            2 => (endpoints[2], endpoints[1]),
            _ => (endpoints[1], endpoints[2]),
        };
        fed += payload.len();
        let seg = TcpSegment {
            src,
            dst,
            seq,
            ack: 0,
            flags: TcpFlags(flags),
            window: 0,
            payload,
        };
        pipeline.push_segment(Timestamp(ts), seg, &mut out);
        assert!(
            pipeline.held_bytes() <= 2 * CAP + 255,
            "held {}",
            pipeline.held_bytes()
        );
        emitted += out.drain(..).map(|m| m.bytes.len()).sum::<usize>();
    }
    pipeline.finish(&mut out);
    emitted += out.drain(..).map(|m| m.bytes.len()).sum::<usize>();
    assert!(emitted <= fed, "emitted {emitted} from {fed}");
});
