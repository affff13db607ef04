//! `store`: the broker store's sustained rate next to a plain librdkafka producer's, and
//! the embedded store's write and window-read rates.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// A realistic 1 KiB request as a framed message.
fn bench_message(id: u64, size: usize) -> capture_user::message::HttpMessage {
    let head = format!("POST /api/items/{id} HTTP/1.1\r\nHost: shop\r\nContent-Length: ");
    let body_len = size.saturating_sub(head.len() + 10);
    let mut bytes = format!("{head}{body_len}\r\n\r\n").into_bytes();
    bytes.resize(bytes.len() + body_len, b'x');
    capture_user::message::HttpMessage {
        id,
        conn_id: id % 64,
        kind: capture_user::message::MessageKind::Request {
            method: "POST".into(),
            uri: format!("/api/items/{id}"),
        },
        minor_version: 1,
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

/// Writes `n` messages as one recording and reads the window back; (write s, read s).
fn store_round(
    store: &mut dyn capture_user::store::Store,
    name: &str,
    n: u64,
    size: usize,
) -> Result<(f64, f64)> {
    let tags = vec![name.to_string()];
    let messages: Vec<_> = (1..=n).map(|i| bench_message(i, size)).collect();
    let started = Instant::now();
    store.begin(name, "bench")?;
    for m in &messages {
        store.append(m, &tags)?;
    }
    let rec = store.end(name, capture_user::store::RecordingSummary::default())?;
    let write = started.elapsed().as_secs_f64();
    let mut read_n = 0u64;
    let started = Instant::now();
    store.read(name, &mut |_| {
        read_n += 1;
        true
    })?;
    let read = started.elapsed().as_secs_f64();
    if read_n != n {
        bail!(
            "read {read_n} of {n} messages back (stored {})",
            rec.messages
        );
    }
    Ok((write, read))
}

/// A plain librdkafka producer with the same settings, for the ratio.
fn plain_producer_seconds(
    bootstrap: &str,
    topic: &str,
    n: u64,
    size: usize,
    headers: usize,
) -> Result<f64> {
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
    let payload = bench_message(1, size).bytes;
    let started = Instant::now();
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
    Ok(started.elapsed().as_secs_f64())
}

pub fn store_rates() -> Result<()> {
    println!("== store rates (1 KiB messages) ==");
    let size = 1024;
    let dir = tempfile::tempdir()?;
    let mut embedded = capture_user::store::embedded::EmbeddedStore::open(dir.path())?;
    let n = 100_000;
    let (write, read) = store_round(&mut embedded, "bench", n, size)?;
    println!(
        "embedded (SQLite WAL): write {:.0} msg/s ({:.1} MB/s), window read {:.0} msg/s ({:.1} MB/s), {n} messages",
        n as f64 / write,
        n as f64 * size as f64 / write / 1e6,
        n as f64 / read,
        n as f64 * size as f64 / read / 1e6
    );

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
    let (write, read) = store_round(&mut kafka, "bench", n, size)?;
    println!(
        "kafka store (tansu, lz4, idempotent): write {:.0} msg/s ({:.1} MB/s), window read {:.0} msg/s, {n} messages",
        n as f64 / write,
        n as f64 * size as f64 / write / 1e6,
        n as f64 / read
    );
    println!(
        "plain librdkafka producer, same payloads and settings: {:.0} msg/s without headers, {:.0} msg/s with 10 headers",
        n as f64 / plain,
        n as f64 / plain_headers
    );
    println!(
        "capture/plain ratio: {:.2} (vs no headers), {:.2} (vs the same number of headers)",
        plain / write,
        plain_headers / write
    );
    Ok(())
}
