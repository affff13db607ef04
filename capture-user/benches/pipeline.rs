//! Criterion benchmarks of the sans-IO protocol path.
//!
//! - `framing`: HTTP framing throughput (bytes/s) on realistic keep-alive streams.
//! - `pipeline`: decode + reassembly + framing, packets/s, on Ethernet/IPv4/TCP frames.
//!
//! Run: `cargo bench -p capture-user --bench pipeline` (figures in the closing notes).

use bytes::Bytes;
use capture_user::decode::{LinkType, frame_flow_hash};
use capture_user::http::{ConnectionFramer, HttpConfig, HttpStats, IdAllocator};
use capture_user::packet::{CapturedPacket, Direction, Timestamp};
use capture_user::pipeline::{Pipeline, PipelineConfig};
use capture_user::reassembly::FlowDir;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A browser-like request and an API-like response (half with chunked bodies).
fn exchange(i: usize) -> (Vec<u8>, Vec<u8>) {
    let request = format!(
        "GET /api/v1/items/{i}?include=details&page=3 HTTP/1.1\r\nHost: shop.example.com\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36\r\n\
         Accept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n\
         Cookie: session=8f2a9c1b7e6d5f4a3b2c1d0e9f8a7b6c; cart=3\r\nConnection: keep-alive\r\n\r\n"
    )
    .into_bytes();
    let body = vec![b'x'; 512 + (i * 997) % 8192];
    let mut response = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n\
        Cache-Control: no-cache\r\nDate: Tue, 24 Nov 2026 10:00:00 GMT\r\n"
        .to_vec();
    if i.is_multiple_of(2) {
        response.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        response.extend_from_slice(&body);
    } else {
        response.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in body.chunks(4096) {
            response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            response.extend_from_slice(chunk);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
    }
    (request, response)
}

/// A stream cut into MSS-sized segments, each a slice of it (as reassembly hands them on).
fn segments(stream: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    (0..stream.len())
        .step_by(1448)
        .map(|at| stream.slice(at..(at + 1448).min(stream.len())))
}

fn framing(c: &mut Criterion) {
    let exchanges: Vec<(Bytes, Bytes)> = (0..1000)
        .map(exchange)
        .map(|(q, r)| (Bytes::from(q), Bytes::from(r)))
        .collect();
    let total: usize = exchanges.iter().map(|(q, r)| q.len() + r.len()).sum();
    let mut group = c.benchmark_group("framing");
    group.throughput(Throughput::Bytes(total as u64));
    group.bench_function("keep_alive_1000_exchanges_mss_segments", |b| {
        b.iter(|| {
            let mut framer = ConnectionFramer::new(HttpConfig::default(), false);
            let mut ids = IdAllocator::default();
            let mut stats = HttpStats::default();
            let mut out = Vec::new();
            for (req, resp) in &exchanges {
                for seg in segments(req) {
                    framer.data(
                        FlowDir::ToServer,
                        Timestamp(1),
                        seg.clone(),
                        &mut ids,
                        &mut stats,
                        &mut out,
                    );
                }
                for seg in segments(resp) {
                    framer.data(
                        FlowDir::ToClient,
                        Timestamp(2),
                        seg.clone(),
                        &mut ids,
                        &mut stats,
                        &mut out,
                    );
                }
                out.clear();
            }
            stats.responses
        })
    });
    group.finish();
}

fn frame(from_client: bool, conn: u16, seq: u32, flags: &str, payload: &[u8]) -> CapturedPacket {
    let client = ([10, 0, (conn >> 8) as u8, conn as u8], 30000 + conn);
    let server = ([10, 1, 0, 1], 80);
    let ((src, sport), (dst, dport)) = if from_client {
        (client, server)
    } else {
        (server, client)
    };
    let mut builder = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 65535);
    if flags.contains('S') {
        builder = builder.syn();
    }
    if flags.contains('A') {
        builder = builder.ack(1);
    }
    let mut data = Vec::new();
    builder.write(&mut data, payload).expect("frame");
    let data = Bytes::from(data);
    CapturedPacket {
        ts: Timestamp(1),
        ifindex: 1,
        direction: Direction::Ingress,
        link: LinkType::Ethernet,
        wire_len: data.len() as u32,
        flow_hash: frame_flow_hash(LinkType::Ethernet, &data),
        data,
    }
}

fn pipeline(c: &mut Criterion) {
    // 50 connections x 20 keep-alive exchanges, segments of at most 1448 bytes, the two
    // directions interleaved per exchange as on the wire.
    let mut packets = Vec::new();
    for conn in 0..50u16 {
        let (mut cseq, mut sseq) = (1000u32, 5000u32);
        packets.push(frame(true, conn, cseq - 1, "S", b""));
        packets.push(frame(false, conn, sseq - 1, "SA", b""));
        for i in 0..20 {
            let (req, resp) = exchange(usize::from(conn) * 20 + i);
            for seg in req.chunks(1448) {
                packets.push(frame(true, conn, cseq, "A", seg));
                cseq = cseq.wrapping_add(seg.len() as u32);
            }
            for seg in resp.chunks(1448) {
                packets.push(frame(false, conn, sseq, "A", seg));
                sseq = sseq.wrapping_add(seg.len() as u32);
            }
        }
    }
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(packets.len() as u64));
    group.bench_function("decode_reassemble_frame_50x20_exchanges", |b| {
        b.iter(|| {
            let mut pipeline = Pipeline::new(PipelineConfig {
                ports: vec![80],
                ..PipelineConfig::default()
            });
            let mut out = Vec::new();
            for p in packets.iter().cloned() {
                pipeline.push_packet(p, &mut out);
                out.clear();
            }
            pipeline.stats().messages
        })
    });
    group.finish();
}

criterion_group!(benches, framing, pipeline);
criterion_main!(benches);
