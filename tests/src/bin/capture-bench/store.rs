//! `store`: the broker store's sustained rate next to a plain librdkafka producer's, and
//! the embedded store's write and window-read rates.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// What a benchmark message's body is made of.
#[derive(Clone, Copy)]
enum Body {
    /// All 'x': as compressible as it gets.
    Repeated,
    /// Pseudo-random bytes: LZ4 cannot shrink them (the honest figure).
    Random,
}

/// A realistic 1 KiB request as a framed message.
fn bench_message(id: u64, size: usize, body: Body) -> capture_user::message::HttpMessage {
    let head = format!("POST /api/items/{id} HTTP/1.1\r\nHost: shop\r\nContent-Length: ");
    let body_len = size.saturating_sub(head.len() + 10);
    let mut bytes = format!("{head}{body_len}\r\n\r\n").into_bytes();
    match body {
        Body::Repeated => bytes.resize(bytes.len() + body_len, b'x'),
        Body::Random => {
            let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            bytes.extend((0..body_len).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }));
        }
    }
    capture_user::message::HttpMessage {
        id,
        conn_id: id % 64,
        kind: capture_user::message::MessageKind::Request {
            method: "POST".into(),
            uri: format!("/api/items/{id}").into(),
        },
        version: capture_user::message::HttpVersion::Http11,
        request_id: None,
        first_ts: capture_user::packet::Timestamp(id),
        last_ts: capture_user::packet::Timestamp(id),
        src: "10.0.0.1:40000".parse().expect("addr"),
        dst: "10.0.0.2:80".parse().expect("addr"),
        bytes: bytes::Bytes::from(bytes),
        body_len: body_len as u64,
        complete: true,
    }
}

/// CPU seconds (user, system) this thread has used.
fn thread_cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// CPU seconds (user + system) the whole process has used: librdkafka works on threads of
/// its own, so the Kafka store's cost is the process's, not the calling thread's.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU (user, system) seconds since `before`.
fn cpu_since(before: (f64, f64)) -> (f64, f64) {
    let now = thread_cpu_seconds();
    (now.0 - before.0, now.1 - before.1)
}

/// Wall and CPU (this thread) seconds of one store round.
struct Round {
    write: f64,
    /// (user, system) CPU seconds.
    write_cpu: (f64, f64),
    /// CPU seconds of the whole process while writing.
    write_process_cpu: f64,
    /// Of `write`: the final `end` (flush and fdatasync).
    end: f64,
    read: f64,
    read_cpu: (f64, f64),
}

/// Writes `n` messages as one recording and reads the window back.
fn store_round(
    store: &mut dyn capture_user::store::Store,
    name: &str,
    n: u64,
    size: usize,
    body: Body,
) -> Result<Round> {
    let tags = vec![name.to_string()];
    let messages: Vec<_> = (1..=n).map(|i| bench_message(i, size, body)).collect();
    let (started, cpu) = (Instant::now(), thread_cpu_seconds());
    let process_cpu = process_cpu_seconds();
    store.begin(name, "bench")?;
    for m in &messages {
        store.append(m, &tags)?;
    }
    let ending = Instant::now();
    let rec = store.end(name, capture_user::store::RecordingSummary::default())?;
    let end = ending.elapsed().as_secs_f64();
    let (write, write_cpu) = (started.elapsed().as_secs_f64(), cpu_since(cpu));
    let write_process_cpu = process_cpu_seconds() - process_cpu;
    let mut read_n = 0u64;
    let (started, cpu) = (Instant::now(), thread_cpu_seconds());
    store.read(name, &mut |_| {
        read_n += 1;
        true
    })?;
    let (read, read_cpu) = (started.elapsed().as_secs_f64(), cpu_since(cpu));
    if read_n != n {
        bail!(
            "read {read_n} of {n} messages back (stored {})",
            rec.messages
        );
    }
    Ok(Round {
        write,
        write_cpu,
        write_process_cpu,
        end,
        read,
        read_cpu,
    })
}

/// A plain librdkafka producer with the same settings, for the ratio.
fn plain_producer_seconds(
    bootstrap: &str,
    topic: &str,
    n: u64,
    size: usize,
    headers: usize,
) -> Result<(f64, f64)> {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "50")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let payload = bench_message(1, size, Body::Repeated).bytes;
    let (started, cpu) = (Instant::now(), process_cpu_seconds());
    for i in 0..n {
        let key = format!("node/1/{}", i % 64);
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload[..]);
        if headers > 0 {
            let mut h = OwnedHeaders::new();
            for j in 0..headers {
                h = h.insert(Header {
                    key: "capture.header",
                    value: Some(&format!("value-{i}-{j}-0123456789")),
                });
            }
            record = record.headers(h);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok((started.elapsed().as_secs_f64(), process_cpu_seconds() - cpu))
}

/// The embedded store: write and window-read rates for compressible and random bodies.
pub fn embedded_store_rates() -> Result<()> {
    println!("== embedded store (segment log) rates, 1 KiB messages ==");
    let size = 1024;
    let n = 200_000;
    // `store-embedded random` (or `repeated`) runs one kind only, for profiling.
    let only = std::env::args().nth(2);
    let kinds = [
        ("'x' bodies", Body::Repeated),
        ("random bodies", Body::Random),
    ];
    for (label, body) in kinds.into_iter().filter(|(_, b)| {
        only.as_deref().is_none_or(|o| {
            o == if matches!(b, Body::Random) {
                "random"
            } else {
                "repeated"
            }
        })
    }) {
        for compress in [false, true] {
            let dir = tempfile::tempdir()?;
            let config = capture_user::store::embedded::EmbeddedConfig {
                compress,
                ..Default::default()
            };
            let mut embedded =
                capture_user::store::embedded::EmbeddedStore::open_with(dir.path(), config)?;
            let r = store_round(&mut embedded, "bench", n, size, body)?;
            let n = n as f64;
            let us =
                |(user, sys): (f64, f64)| format!("{:.2}+{:.2}", user * 1e6 / n, sys * 1e6 / n);
            let codec = if compress { "lz4" } else { "raw" };
            println!(
                "embedded, {label:<13} {codec}: write {:>8.0} msg/s ({:>5.0} MB/s, CPU {} us/msg user+sys, end+fdatasync {:.2} s), window read {:>8.0} msg/s ({:>5.0} MB/s, CPU {} us/msg), {:.0} MB on disk",
                n / r.write,
                n * size as f64 / r.write / 1e6,
                us(r.write_cpu),
                r.end,
                n / r.read,
                n * size as f64 / r.read / 1e6,
                us(r.read_cpu),
                embedded.log_bytes()? as f64 / 1e6
            );
        }
    }
    println!(
        "(write is begin, appends and end, whose fdatasync makes the recording durable; CPU is the calling thread's, where the embedded store does all its work)"
    );
    Ok(())
}

pub fn store_rates() -> Result<()> {
    embedded_store_rates()?;
    println!("== Kafka store rates (1 KiB messages) ==");
    let size = 1024;
    let broker = tests::broker::Tansu::start()?;
    let n = 20_000;
    // tansu does not create topics on demand: create the plain producer's topic first.
    drop(capture_user::store::kafka::KafkaStore::open(
        capture_user::store::kafka::KafkaConfig::new(&broker.bootstrap(), "plain"),
    )?);
    let plain = plain_producer_seconds(&broker.bootstrap(), "plain", n, size, 0)?;
    let plain_headers = plain_producer_seconds(&broker.bootstrap(), "plain", n, size, 10)?;
    let mut config = capture_user::store::kafka::KafkaConfig::new(&broker.bootstrap(), "bench");
    config.queue_max_messages = 1_000_000;
    let mut kafka = capture_user::store::kafka::KafkaStore::open(config)?;
    let Round {
        write,
        read,
        write_process_cpu,
        ..
    } = store_round(&mut kafka, "bench", n, size, Body::Repeated)?;
    let us = |cpu: f64| cpu * 1e6 / n as f64;
    println!(
        "kafka store (tansu, lz4, idempotent): write {:.0} msg/s ({:.1} MB/s, CPU {:.1} us/msg for the whole process, librdkafka included), window read {:.0} msg/s, {n} messages",
        n as f64 / write,
        n as f64 * size as f64 / write / 1e6,
        us(write_process_cpu),
        n as f64 / read
    );
    println!(
        "plain librdkafka producer, same payloads and settings: {:.0} msg/s ({:.1} us/msg CPU) without headers, {:.0} msg/s ({:.1} us/msg) with 10 headers",
        n as f64 / plain.0,
        us(plain.1),
        n as f64 / plain_headers.0,
        us(plain_headers.1)
    );
    println!(
        "capture/plain ratio: {:.2} (vs no headers), {:.2} (vs the same number of headers)",
        plain.0 / write,
        plain_headers.0 / write
    );
    Ok(())
}
